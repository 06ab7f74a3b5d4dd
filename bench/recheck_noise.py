"""How far the checks' figures move when the same files are measured again: the noise `verify --check` allows.

A published manifest says how far a re-measurement may land from its figures (`manifest.Tolerance`).
This measures it instead of guessing: it re-runs the checks of built variants in fresh processes
at 1 and at N threads (another machine's core count changes how a CPU kernel splits its sums) and
prints each figure as recorded in report.json and as measured again, with the largest relative
difference beside the tolerance.

    python bench/recheck_noise.py --config examples/smollm2.yaml --out out --variant gptq-4bit-32g
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

FIGURES = ("ppl", "base_ppl", "mean_kld", "top1_agreement")

MEASURE = r"""
import json, sys, torch
from pathlib import Path
torch.set_num_threads(int(sys.argv[4]))
from quantize.checks.checker import Checker
from quantize.context import RunContext
from quantize.project import load_config
project = load_config(sys.argv[1])
variant = project.variant(sys.argv[3])
ctx = RunContext(project, Path(sys.argv[2]))
got = Checker(ctx).check(variant, ctx.folder(variant))
print(json.dumps({k: getattr(got, k) for k in sys.argv[5].split(",")}))
"""


def measure(config: str, out: str, variant: str, threads: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, config, out, variant, str(threads), ",".join(FIGURES)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()

    from quantize.manifest import Tolerance
    from quantize.project import load_config
    from quantize.records import read_report

    project = load_config(args.config)
    tol = Tolerance()
    allowed = {"ppl": tol.ppl_rel, "base_ppl": tol.ppl_rel, "mean_kld": tol.mean_kld_rel, "top1_agreement": None}
    rows = []
    for name in args.variant:
        variant = project.variant(name)
        report = read_report(Path(args.out) / variant.branch)
        assert report is not None and report.checks is not None, f"{name}: not checked in {args.out}"
        runs = {t: measure(args.config, args.out, name, t) for t in sorted({1, args.threads})}
        for fig in FIGURES:
            recorded = getattr(report.checks, fig)
            again = [r[fig] for r in runs.values()]
            worst = max(abs(a - recorded) for a in again)
            rel = worst / abs(recorded) if recorded else 0.0
            limit = f"{allowed[fig]:.3%} rel" if allowed[fig] is not None else f"{tol.top1_abs} abs"
            rows.append([name, fig, f"{recorded:.8g}", *(f"{a:.8g}" for a in again), f"{worst:.2e} ({rel:.2e})", limit])
    head = [
        "variant",
        "figure",
        "report.json",
        *(f"{t} thread(s)" for t in sorted({1, args.threads})),
        "max diff (rel)",
        "tolerance",
    ]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
