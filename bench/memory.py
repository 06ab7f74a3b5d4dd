"""Issue #8.3: peak RSS of every stage against the fp16 size of the model (goal: at most 1.3x).

Why: a 7B build must fit the machine it runs on; the toolkit records each stage's own
peak RSS (Linux's resettable VmHWM, quantize/measure.py) in report.json, and the checks
record theirs. This reads those records from built variant folders (by default the
single-variant runs of sharing.py, one fresh process per variant, and its matrix run)
and sets them beside the base model's fp16 size and beside the RSS floor of a process
that has only imported the libraries the stages import (torch, transformers, gptqmodel,
llama_cpp), so a small model's figures can be read without that constant.

    .venv/bin/python bench/memory.py                       # after bench/sharing.py
    .venv/bin/python bench/memory.py --out DIR [--out DIR]  # any build folders
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from common import CONFIG, WORK, base_fp16_bytes, bench_env, log, read_reports, table, write_result

FLOOR_SCRIPT = """
import quantize.build, quantize.checks.checker, torch, transformers, gptqmodel, llama_cpp
for line in open('/proc/self/status'):
    if line.startswith('VmHWM:'):
        print(int(line.split()[1]) * 1024)
"""


def import_floor() -> int:
    """Peak RSS of a process that imports what the stages import, and does nothing else."""
    proc = subprocess.run(
        [sys.executable, "-c", FLOOR_SCRIPT], env=bench_env(), capture_output=True, text=True, check=True
    )
    return int(proc.stdout.strip().splitlines()[-1])


def rows_of(out: Path, fp16: int, floor: int, run: str) -> list[dict]:
    rows = []
    for name, report in read_reports(out).items():
        stages = {k: (v["seconds"], v["peak_rss_bytes"]) for k, v in report["stages"].items()}
        checks = report.get("checks")
        if checks and checks["memory"]["peak_rss_bytes"]:
            stages["check"] = (None, checks["memory"]["peak_rss_bytes"])
        for stage, (seconds, peak) in stages.items():
            if peak is None:
                continue
            rows.append(
                {
                    "run": run,
                    "variant": name,
                    "stage": stage,
                    "seconds": seconds,
                    "peak_gb": peak / 1e9,
                    "x_fp16": peak / fp16,
                    "above_floor_x_fp16": (peak - floor) / fp16,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        action="append",
        help="a build output root (repeatable); default: sharing.py's separate-out/* and matrix-out",
    )
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument(
        "--cache",
        type=Path,
        default=WORK / "sharing" / "matrix-cache",
        help="QUANTIZE_CACHE holding the resolved base model (default: %(default)s)",
    )
    args = parser.parse_args()
    sharing = WORK / "sharing"
    outs = args.out or sorted((sharing / "separate-out").glob("*")) + [sharing / "matrix-out"]
    params, fp16 = base_fp16_bytes(args.config, args.cache)
    log(f"base model: {params / 1e6:.1f} M parameters, fp16 {fp16 / 1e9:.3f} GB")
    floor = import_floor()
    log(f"RSS floor of a process with torch/transformers/gptqmodel/llama_cpp imported: {floor / 1e9:.3f} GB")
    rows = []
    for out in outs:
        run = "matrix" if out.name == "matrix-out" else "single"
        rows += rows_of(out, fp16, floor, run)
    if not rows:
        raise SystemExit(f"no report.json under {', '.join(map(str, outs))}; run bench/sharing.py first")
    cols = [
        ("run", "RUN", ""),
        ("variant", "VARIANT", ""),
        ("stage", "STAGE", ""),
        ("seconds", "SECONDS", ".1f"),
        ("peak_gb", "PEAK RSS GB", ".3f"),
        ("x_fp16", "x FP16", ".2f"),
        ("above_floor_x_fp16", "(PEAK-FLOOR) x FP16", ".2f"),
    ]
    print(table(rows, cols))
    worst = {}
    for r in rows:
        if r["run"] == "single" or not any(x["run"] == "single" for x in rows):
            if r["stage"] not in worst or r["peak_gb"] > worst[r["stage"]]["peak_gb"]:
                worst[r["stage"]] = r
    print("\nhighest peak per stage:")
    print(table(sorted(worst.values(), key=lambda r: -r["peak_gb"]), cols))
    write_result(
        "memory",
        {
            "params": params,
            "fp16_bytes": fp16,
            "import_floor_bytes": floor,
            "outs": [str(o) for o in outs],
            "rows": rows,
            "peak_per_stage": sorted(worst.values(), key=lambda r: -r["peak_gb"]),
        },
    )


if __name__ == "__main__":
    main()
