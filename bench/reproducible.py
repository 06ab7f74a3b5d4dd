"""Reproducible bytes, measured: which engines give identical files from the same inputs, at the same
and at another thread count.

    .venv/bin/python bench/reproducible.py

Builds the tiny Mistral's one-variant-per-engine matrix of `tests/reproduce.py` three times, each with
a cache of its own: twice at torch's default thread count, once with OMP_NUM_THREADS=1. Prints the
table (branch, engine, same threads identical, one thread identical, which files differ) and writes
bench/results/reproducible.json. About 3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from common import log, tiny_workspace, write_result


def main() -> None:
    work, base = tiny_workspace("reproducible")
    from conftest import write_config
    from reproduce import BRANCHES, VARIANTS, build, differences

    config = write_config(work, base, VARIANTS)
    downloads = Path(os.environ["QUANTIZE_CACHE"]) / "pypi"
    started = time.monotonic()
    outs = {}
    for name, env in (("first", {}), ("second", {}), ("one-thread", {"OMP_NUM_THREADS": "1"})):
        log(f"build {name} {env or ''}")
        outs[name] = build(config, work, name, downloads, env)
    threads = {
        name: json.loads((out / "mlx-4bit" / "report.json").read_text())["machine"]["threads"]
        for name, out in outs.items()
    }
    rows = []
    for branch, engine in BRANCHES.items():
        again = differences(outs["first"] / branch, outs["second"] / branch)
        one = differences(outs["first"] / branch, outs["one-thread"] / branch)
        rows.append({"branch": branch, "engine": engine, "same_threads": again, "one_thread": one})
    print(f"\nthreads: {threads}\n")
    print("| branch | engine | two builds, same threads | at 1 thread | files that differ |")
    print("|---|---|---|---|---|")
    for r in rows:
        same = "identical" if not r["same_threads"] else "differ"
        one = "identical" if not r["one_thread"] else "differ"
        print(f"| {r['branch']} | {r['engine']} | {same} | {one} | {', '.join(r['same_threads'] + r['one_thread'])} |")
    path = write_result(
        "reproducible",
        {"threads": threads, "minutes": round((time.monotonic() - started) / 60, 1), "rows": rows},
    )
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
