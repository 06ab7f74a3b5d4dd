"""Faults survived, measured: the table README's reliability section states.

    .venv/bin/python bench/faults.py [--points 20] [--shards 20] [--transports git,http]

Builds the tiny Mistral family twice (two calibration sizes: an old and a new version of every
branch), then runs the trials of `tests/faults.py` through the real CLI: SIGKILL at `--points`
moments spread over a publish's measured run (on a fresh remote and on one holding the old
version, both transports, alternately the process alone and its whole group), three shards
publishing at once `--shards` times, every hub fault of `hub_faults()`, and every damaged
output against check, publish, card and report. Prints the table (fault, trials, survived,
data lost) and writes bench/results/faults.json. About 25 minutes on 2 cores at the defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from common import log, machine, tiny_workspace, write_result

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20, help="SIGKILL moments per remote and transport")
    parser.add_argument("--shards", type=int, default=20, help="runs of three concurrent publishes per transport")
    parser.add_argument("--transports", default="git,http")
    parser.add_argument(
        "--code", type=Path, help="run publish from this checkout instead (a negative control: the code before a fix)"
    )
    parser.add_argument("--only", choices=("kills", "shards", "hub", "damaged"), action="append")
    args = parser.parse_args()
    if args.code:
        os.environ["QUANTIZE_FAULTS_CODE"] = str(args.code.resolve())
    kinds = args.transports.split(",")
    only = set(args.only or ("kills", "shards", "hub", "damaged"))
    import faults  # tests/faults.py, the trials shared with tests/test_faults.py (reads QUANTIZE_FAULTS_CODE)

    work, base = tiny_workspace("faults")
    log("building the new and the old version of the family")
    new = faults.build_family(work / "new", base)
    old = faults.build_family(work / "old", base, samples=6)

    rows: list[faults.Outcome] = []
    seconds: dict[str, float] = {}
    started = time.monotonic()
    for kind in kinds:
        if "kills" in only:
            seconds[kind] = faults.publish_seconds(new, kind, work / f"{kind}-timing")
            log(f"{kind}: one publish takes {seconds[kind]:.1f} s; killing at {args.points} points over it")
            rows += faults.kill_trials(new, old, kind, work / "kills", args.points, seconds[kind])
        if "shards" in only:
            log(f"{kind}: {args.shards} runs of three shards at once")
            rows.append(faults.concurrent_trials(new, kind, work / "shards", args.shards))
    if "http" in kinds and "hub" in only:
        log("hub faults")
        rows += faults.hub_fault_trials(new, old, work / "hub-faults", faults.hub_faults())
    if "damaged" in only:
        log("damaged outputs")
        rows += faults.damaged_trials(new, work / "damaged")

    print(faults.table(rows))
    for row in rows:
        for note in row.notes[:3]:
            print(f"  {row.fault}: {note}")
    path = write_result(
        "faults-control" if args.code else "faults",
        {
            "machine": machine(),
            "publish_seconds": seconds,
            "code": str(args.code or "this checkout"),
            "points": args.points,
            "shard_runs": args.shards,
            "minutes": round((time.monotonic() - started) / 60, 1),
            "rows": [vars(r) for r in rows],
        },
    )
    log(f"wrote {path}")
    if any(r.lost for r in rows):
        raise SystemExit("some fault lost data (see the table)")


if __name__ == "__main__":
    main()
