"""Issue #8.1: the toolkit's overhead over calling the engines directly (goal: at most 1.05x).

Why: the toolkit wraps gptqmodel and llama.cpp with config, hashing, staging, float16
casting and reports; that must not cost noticeably more than the engine's own work.
For one GPTQ and one GGUF variant of SmolLM2 this alternates, from a warm cache:

  toolkit: python -m quantize build --variant V --no-check --force   (its report.json
           gives the quantize stage's seconds; the process wall time is taken too)
  raw:     bench/raw_gptq.py / bench/raw_gguf.py, a minimal script calling gptqmodel
           (load, quantize, save) or llama_cpp.llama_model_quantize on the same
           checkpoint, the same calibration token array, the same F16 GGUF

and reports the ratio of medians, stage against raw call (like for like) and process
against process (with start-up, config, hashing and size prediction).

    nice -n 10 .venv/bin/python bench/overhead.py [--runs 3] [--gguf-runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from common import (
    BENCH,
    CONFIG,
    RESULTS,
    WORK,
    bench_env,
    log,
    median,
    quantize_cli,
    read_reports,
    run,
    seed_downloads,
    table,
    write_result,
)

GPTQ_VARIANT, GGUF_VARIANT = "gptq-4bit-32g", "gguf-q4_k_m"


def prepare(work: Path, cache: Path, warm_gptq: bool) -> dict:
    """Warm the cache with a toolkit build of each variant, then expose the toolkit's exact inputs as files."""
    for v in (GPTQ_VARIANT, GGUF_VARIANT) if warm_gptq else (GGUF_VARIANT,):
        log(f"warm-up build of {v} (not measured)")
        run(
            quantize_cli(
                "build",
                "--config",
                str(CONFIG),
                "--variant",
                v,
                "--no-check",
                "--force",
                "--out",
                str(work / "toolkit-out"),
            ),
            bench_env(cache),
        )
    os.environ["QUANTIZE_CACHE"] = str(cache)
    from quantize.context import RunContext
    from quantize.formats.gguf import model_meta
    from quantize.formats.gguf.build import f16_gguf
    from quantize.project import load_config

    project = load_config(CONFIG)
    builder = RunContext(project, work / "toolkit-out")
    gptq = project.variant(GPTQ_VARIANT)
    tokens = work / "calibration.npy"
    np.save(tokens, builder.calibration(gptq).input_ids)  # a cache hit: the array the toolkit fed gptqmodel
    return {
        "model": str(builder.base.path),
        "tokens": str(tokens),
        "spec": gptq.spec,
        "f16": str(f16_gguf(builder.base, model_meta(builder.project))),
        "quant_type": project.variant(GGUF_VARIANT).spec.quant_type,
    }


def toolkit_run(work: Path, cache: Path, variant: str) -> dict:
    out = work / "toolkit-out"
    wall, _ = run(
        quantize_cli(
            "build", "--config", str(CONFIG), "--variant", variant, "--no-check", "--force", "--out", str(out)
        ),
        bench_env(cache),
    )
    report = read_reports(out)[variant]
    stages = {k: v["seconds"] for k, v in report["stages"].items()}
    return {"wall": round(wall, 2), "stage": stages["quantize"], "stages": stages}


def raw_run(work: Path, inputs: dict, fmt: str) -> dict:
    out = work / "raw-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if fmt == "gptq":
        spec = inputs["spec"]
        cmd = [
            sys.executable,
            str(BENCH / "raw_gptq.py"),
            "--model",
            inputs["model"],
            "--tokens",
            inputs["tokens"],
            "--out",
            str(out),
            "--bits",
            str(spec.bits),
            "--group-size",
            str(spec.group_size),
            "--damp-percent",
            str(spec.damp_percent),
        ] + ([] if spec.desc_act else ["--no-desc-act"])
    else:
        cmd = [
            sys.executable,
            str(BENCH / "raw_gguf.py"),
            "--f16",
            inputs["f16"],
            "--out",
            str(out / "model.gguf"),
            "--type",
            inputs["quant_type"],
        ]
    wall, output = run(cmd, bench_env())
    seconds = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])["seconds"]
    return {"wall": round(wall, 2), "stage": seconds}


def alternate(work: Path, cache: Path, inputs: dict, fmt: str, variant: str, runs: int) -> dict:
    toolkit, raw = [], []
    for i in range(runs):
        order = ("toolkit", "raw") if i % 2 == 0 else ("raw", "toolkit")  # alternate who goes first
        for who in order:
            if who == "toolkit":
                toolkit.append(toolkit_run(work, cache, variant))
            else:
                raw.append(raw_run(work, inputs, fmt))
            last = (toolkit if who == "toolkit" else raw)[-1]
            log(f"{fmt} run {i + 1}/{runs} {who}: stage {last['stage']:.2f} s, process {last['wall']:.2f} s")
    t_stage, r_stage = median([t["stage"] for t in toolkit]), median([r["stage"] for r in raw])
    t_wall, r_wall = median([t["wall"] for t in toolkit]), median([r["wall"] for r in raw])
    return {
        "variant": variant,
        "runs": runs,
        "toolkit": toolkit,
        "raw": raw,
        "toolkit_stage_s": t_stage,
        "raw_stage_s": r_stage,
        "stage_ratio": round(t_stage / r_stage, 3),
        "toolkit_process_s": t_wall,
        "raw_process_s": r_wall,
        "process_ratio": round(t_wall / r_wall, 3),
    }


def cast_seconds(work: Path) -> float:
    """The toolkit-only step inside its GPTQ quantize stage: re-saving gptqmodel's output in float16."""
    import time

    from quantize.formats.weightfolder import cast_to_float16

    copy = work / "cast-copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(work / "raw-out", copy)  # the raw script's bfloat16 output, as gptqmodel saved it
    start = time.perf_counter()
    cast_to_float16(copy)
    seconds = time.perf_counter() - start
    shutil.rmtree(copy)
    return round(seconds, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="GPTQ runs of each side (default: %(default)s)")
    parser.add_argument("--gguf-runs", type=int, default=5, help="GGUF runs of each side (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=WORK / "overhead")
    parser.add_argument("--only", choices=("gptq", "gguf"), help="run one format only")
    parser.add_argument(
        "--cache",
        type=Path,
        default=WORK / "sharing" / "matrix-cache",
        help="QUANTIZE_CACHE to use; when it already holds the base model (sharing.py's matrix run "
        "leaves one) the GPTQ warm-up build is skipped (default: %(default)s)",
    )
    args = parser.parse_args()
    cache = args.cache
    warm = (cache / "base").is_dir() and (cache / "calibration").is_dir()
    cache.mkdir(parents=True, exist_ok=True)
    seed_downloads(cache, WORK / "sharing" / "downloads-cache")
    inputs = prepare(args.work, cache, warm_gptq=not warm)
    results = []
    if args.only in (None, "gguf"):
        results.append(alternate(args.work, cache, inputs, "gguf", GGUF_VARIANT, args.gguf_runs))
    extra = {}
    if args.only in (None, "gptq"):
        results.append(alternate(args.work, cache, inputs, "gptq", GPTQ_VARIANT, args.runs))
        extra["gptq_cast_to_float16_s"] = cast_seconds(args.work)
        log(
            "of the toolkit's GPTQ stage, casting the saved tensors to float16 takes "
            f"{extra['gptq_cast_to_float16_s']} s"
        )
    previous = RESULTS / "overhead.json"
    if args.only and previous.is_file():  # keep the other format's last measurement
        old = json.loads(previous.read_text())
        results = [r for r in old["results"] if r["variant"] not in {x["variant"] for x in results}] + results
        extra = {**{k: v for k, v in old.items() if k == "gptq_cast_to_float16_s"}, **extra}
    for r in results:  # pairs run back to back, so each pair's ratio is less exposed to a neighbour's load
        r["pair_ratios"] = [round(t["stage"] / w["stage"], 3) for t, w in zip(r["toolkit"], r["raw"])]
    cols = [
        ("variant", "VARIANT", ""),
        ("runs", "RUNS", ""),
        ("toolkit_stage_s", "TOOLKIT STAGE s", ".2f"),
        ("raw_stage_s", "RAW CALL s", ".2f"),
        ("stage_ratio", "RATIO", ".3f"),
        ("toolkit_process_s", "TOOLKIT PROCESS s", ".2f"),
        ("raw_process_s", "RAW PROCESS s", ".2f"),
        ("process_ratio", "RATIO", ".3f"),
        ("pair_ratios", "STAGE RATIO PER PAIR", ""),
    ]
    print(table(results, cols))
    write_result("overhead", {"inputs": {k: str(v) for k, v in inputs.items()}, "results": results, **extra})


if __name__ == "__main__":
    main()
