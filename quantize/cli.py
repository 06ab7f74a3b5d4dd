"""`python -m quantize SUBCOMMAND`: list, plan, matrix, build, check, report, card, publish, verify, serve.

Every QuantizeError becomes one line on stderr and a non-zero exit; tracebacks are for
bugs, not for bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from . import formats
from .build import Builder
from .card import write_cards
from .card.compare import collect, write_outputs
from .checks.checker import Checker, format_verdicts, run_check
from .checks.recheck import problems as recheck_problems
from .checks.recheck import recheck
from .config import Project
from .context import RunContext
from .errors import AssetError, DamagedOutput, NotBuilt, QuantizeError
from .hub.git import GitTransport
from .hub.http import HubTransport
from .hub.mirror import serve_forever
from .hub.publish import Publisher, Transport
from .hub.verify import verify, write_record
from .paths import cache_root, raise_if_disk_full
from .plan import Planner, format_table, plan_json
from .progress import setup_logging
from .project import load_config
from .selection import select
from .weblinks import Links

log = logging.getLogger("quantize")

DEFAULT_CONFIG = "variants.yaml"


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="variants file (default: %(default)s)")


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--filter",
        action="append",
        metavar="PATTERN",
        help="key=value (format=gguf, bits=4) or a glob on names; repeatable, all must match",
    )
    parser.add_argument("--shard", metavar="K/N", help="the K-th of N disjoint round-robin shards")


def _add_variants(parser: argparse.ArgumentParser, force_help: str | None = None) -> None:
    """What build, check and publish share: which variants, where their folders are (and --force)."""
    _add_config(parser)
    parser.add_argument("--variant", action="append", help="short or branch name; repeatable")
    parser.add_argument("--all", action="store_true", help="every variant in the config")
    _add_selection(parser)
    parser.add_argument("--out", default="out", help="output root (default: %(default)s)")
    if force_help:
        parser.add_argument("--force", action="store_true", help=force_help)


def _add_destination(parser: argparse.ArgumentParser, git_help: str) -> None:
    """Where the family goes: `card` writes its links for it and `publish` sends there (the same two options)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--endpoint", default=None, help="hub URL for the HTTP API (default: HF_ENDPOINT or https://huggingface.co)"
    )
    where.add_argument(
        "--git", metavar="ROOT", help=f"{git_help}: a local mirror folder (served by `serve`) or a URL prefix"
    )


def cmd_list(args: argparse.Namespace) -> int:
    project = load_config(args.config)
    rows = [("NAME", "BRANCH", "FORMAT", "REPO", "PARAMETERS")]
    for v in project.variants:
        branch = f"{v.branch} (+main)" if v.default else v.branch
        params = " ".join(f"{k}={val}" for k, val in v.params().items())
        calib = f" calibration={v.calibration}" if v.calibration else ""
        rows.append((v.name, branch, v.format, v.repo or "-", params + calib))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def _selected(project: Project, args: argparse.Namespace):
    if not args.all and not args.variant:
        raise QuantizeError(
            "no variant selected", fix="name variants with --variant NAME (see `python -m quantize list`) or pass --all"
        )
    if args.variant and (args.shard or args.filter):
        raise QuantizeError(
            "--variant with --shard or --filter",
            fix="--shard and --filter select from --all; do not combine them with --variant",
        )
    return select(project.select(None if args.all else args.variant), args.filter, args.shard)


def _planner(project: Project) -> Planner:
    return Planner.for_project(project)


def cmd_plan(args: argparse.Namespace) -> int:
    project = load_config(args.config)
    planner = _planner(project)
    rows = planner.rows(select(list(project.variants), args.filter, args.shard))
    print(plan_json(rows) if args.json else format_table(rows, planner.params))
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    """CI matrix entries; memory comes from `plan` when config.json can be read, else is null."""
    project = load_config(args.config)
    variants = select(list(project.variants), args.filter, args.shard)
    try:
        planned = {r.variant.name: r for r in _planner(project).rows(variants)}
    except AssetError as err:
        log.warning("no memory estimates: %s", err)
        planned = {}
    include = []
    for v in variants:
        row = planned.get(v.name)
        include.append(
            {
                "variant": v.name,
                "branch": v.branch,
                "format": v.format,
                "runner": formats.of(v).runner(v.spec),
                "memory_gb": None if row is None or row.run_bytes is None else round(row.run_bytes / 1e9, 2),
            }
        )
    if args.output == "github":
        print(f"matrix={json.dumps({'include': include}, separators=(',', ':'))}")
    else:
        print(json.dumps(include, indent=2))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    project = load_config(args.config)
    variants = _selected(project, args)
    ctx = RunContext(project, Path(args.out), force=args.force)
    outcomes = Builder(ctx, check=not args.no_check, preflight=not args.no_preflight).build_all(variants)
    for o in outcomes:
        print(
            f"{o.variant.name:24s} {o.status:11s} {o.report.total_bytes / 1e6:9.1f} MB  {o.report.status:7s} {o.folder}"
        )
    failed = [o.variant.name for o in outcomes if o.report.status == "failed"]
    if failed:
        print(f"error: failed their checks (built, not publishable): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Check what is built. Named variants must be built; a selection (`--all`, `--filter`, `--shard`) skips
    and lists the unbuilt ones, as a CI shard's out folder holds only its own. A damaged folder is named
    and counted as failed, and the others are still checked: the exit is 1 only when a check was tried
    and failed (or nothing selected is built at all)."""
    project = load_config(args.config)
    checker = Checker(RunContext(project, Path(args.out), force=args.force))
    failed, damaged, skipped, checked = [], [], [], 0
    for variant in _selected(project, args):
        try:
            report = run_check(checker, variant)
        except NotBuilt as err:
            if args.variant:
                raise
            skipped.append(variant.name)
            log.info("skipped %s: %s", variant.name, err)
            continue
        except DamagedOutput as err:
            damaged.append(str(err))
            continue
        assert report.checks is not None  # run_check records the checks (or returns a report that has them)
        checked += 1
        print(format_verdicts(variant.name, report.checks))
        if not report.checks.passed:
            failed.append(variant.name)
    if skipped:
        print(f"skipped (not built in {args.out}): {', '.join(skipped)}")
    if not checked and not damaged:
        raise NotBuilt(f"{args.out}: no selected variant is built", fix="run `python -m quantize build` first")
    problems = ([f"failed gates: {', '.join(failed)}"] if failed else []) + (
        [f"damaged, not checked: {'; '.join(damaged)}"] if damaged else []
    )
    if problems:
        print(f"error: {'; '.join(problems)}", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    project = load_config(args.config)
    table = collect(project, Path(args.out))
    if not table.rows:
        raise QuantizeError(
            f"{args.out}: no built variants of {project.path.name}; run `python -m quantize build` first"
        )
    print(table.markdown() if args.markdown else table.text())
    for path in write_outputs(table, Path(args.out)):
        log.info("wrote %s", path)
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    project = load_config(args.config)
    folders = write_cards(project, Path(args.out), Links.destination(args.endpoint, args.git))
    if not folders:
        raise QuantizeError(
            f"{args.out}: no variant of {project.path.name} has passed its checks; "
            "run `python -m quantize build` (which checks) first"
        )
    for repo, folder in folders.items():
        print(f"{repo:40s} {folder / 'README.md'}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    project = load_config(args.config)
    variants = _selected(project, args)
    transport: Transport
    if args.git:
        transport = GitTransport(args.git)
    else:
        transport = HubTransport(args.endpoint)
    records, skipped = Publisher(project, Path(args.out), transport).publish_all(
        variants, args.only_passed, skip_unbuilt=not args.variant
    )
    for record in records:
        for t in record.targets:
            what = (
                f"uploaded {len(t.uploaded)} file(s), deleted {len(t.deleted)}"
                if t.uploaded or t.deleted
                else "up to date, nothing uploaded"
            )
            print(f"{record.variant:24s} {t.repo}@{t.branch}: {what}; {t.verified} file(s) verified")
    if skipped:
        print(f"skipped: {', '.join(s.variant for s in skipped)} (why: above)")
    damaged = [s for s in skipped if s.damaged]
    if damaged:
        print(f"error: damaged, not published: {'; '.join(s.why for s in damaged)}", file=sys.stderr)
        return 1
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Files first; with --check (and the files intact) the figures too, measured again here."""
    record, folder, manifests = verify(args.repo, args.revision, Path(args.out), args.endpoint, args.git)
    if args.check and record.passed:
        project = load_config(args.config)
        record.rechecked = recheck(project, folder, manifests, Path(args.out) / "work")
        record.problems += recheck_problems(record.rechecked)
        record.passed = not record.problems
        for r in record.rechecked:
            for x in r.figures:
                print(f"{r.variant:24s} {x.figure:15s} published {x.published:.6g}, here {x.measured:.6g}")
    path = write_record(Path(args.out), record)
    for m in record.manifests:
        print(f"{m.variant or '?':24s} {m.path}: {m.files} file(s) named")
    for problem in record.problems:
        print(f"  problem: {problem}")
    state = "verified" if record.passed else f"FAILED, {len(record.problems)} problem(s)"
    print(f"{record.repo}@{record.revision}: {record.files_checked} file(s) checked, {state}; wrote {path}")
    if not record.passed:
        print(f"error: {record.repo}@{record.revision}: {record.problems[0]}", file=sys.stderr)
        return 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    return serve_forever(Path(args.mirror), args.host, args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m quantize", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="print every variant of the matrix")
    _add_config(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("plan", help="predict sizes, memory and compatible clients from config.json alone")
    _add_config(p)
    _add_selection(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("matrix", help="print the variants as CI matrix entries")
    _add_config(p)
    _add_selection(p)
    p.add_argument(
        "--format",
        dest="output",
        choices=("json", "github"),
        default="json",
        help="github: one `matrix=...` line for $GITHUB_OUTPUT",
    )
    p.set_defaults(func=cmd_matrix)

    p = sub.add_parser("build", help="calibrate and quantize variants into OUT/BRANCH")
    _add_variants(p, force_help="rebuild even when inputs are unchanged")
    p.add_argument("--no-check", action="store_true", help="skip the checks (the variant stays unpublishable)")
    p.add_argument(
        "--no-preflight",
        action="store_true",
        help="build even when a stage's predicted RAM, VRAM or disk exceeds what the machine has",
    )
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("check", help="perplexity, KLD, memory and smoke chat of built variants, judged by gates")
    _add_variants(p, force_help="check again even when already checked")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("report", help="one table of every built variant, as text/Markdown, JSON and a PNG plot")
    _add_config(p)
    p.add_argument("--out", default="out", help="output root (default: %(default)s)")
    p.add_argument("--markdown", action="store_true", help="print the Markdown table")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("card", help="write README.md for every output repo from the reports (OUT/cards/)")
    _add_config(p)
    p.add_argument("--out", default="out", help="output root (default: %(default)s)")
    _add_destination(p, "cards for a git destination instead (what `publish --git` takes)")
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("publish", help="push checked variants to their hub branches, with the card, and verify")
    _add_variants(p)
    p.add_argument(
        "--only-passed",
        action="store_true",
        help="skip (and list) variants that are not built or did not pass, instead of refusing them all",
    )
    _add_destination(p, "push over git instead")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("verify", help="download a published branch and check every file against its quantize.json")
    p.add_argument("repo", help="OWNER/NAME")
    p.add_argument("--revision", default="main", help="branch (default: %(default)s)")
    p.add_argument("--out", default="verified", help="where the branch is downloaded to (default: %(default)s)")
    _add_destination(p, "clone it from a git destination instead (what `publish --git` pushed to)")
    p.add_argument(
        "--check",
        action="store_true",
        help="also re-run the checks on the downloaded files and compare with the published figures",
    )
    _add_config(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("serve", help="serve a local mirror folder to huggingface_hub clients (read-only, via olah)")
    p.add_argument("--mirror", default="out/hub", help="folder `publish --git` wrote (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.set_defaults(func=cmd_serve)
    return parser


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A CI job cancelled with SIGTERM must unwind like Ctrl-C, so staged folders are removed.
    signal.signal(signal.SIGTERM, _terminate)

    setup_logging(args.verbose)
    try:
        return args.func(args)
    except QuantizeError as err:
        return _fail(err)
    except KeyboardInterrupt:
        print("error: interrupted; nothing half-written was kept, re-run to resume", file=sys.stderr)
        return 130
    except Exception as err:  # an engine's own error wrapping ENOSPC: the same one line as any disk-full error
        try:
            raise_if_disk_full(err, cache_root())
        except QuantizeError as full:
            return _fail(full)
        raise


def _fail(err: QuantizeError) -> int:
    print("error: " + " ".join(str(err).splitlines()), file=sys.stderr)  # one line, whatever the input held
    return err.exit_code
