"""Faults injected into real publishes, and what a reader sees: shared by `tests/test_faults.py` and `bench/faults.py`.

Every trial runs the real CLI (`python -m quantize publish`) in a subprocess against a real
remote: a git mirror folder (the git transport) or `localhub` (the HTTP transport, in this
process's thread). A trial breaks one publish (SIGKILL at a point of its run, a hub fault,
other publishes at once), looks at the remote with a plain client (huggingface_hub's HfApi
for the HTTP hub, git itself for the mirror), then runs `publish` once more and requires it
to converge. `Outcome.lost` counts what must never happen: a branch whose files are not one
complete version (old, new, or none yet), a rerun that fails, a final remote that is not
the new version, or an "another writer" message when there was none.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from localhub import LocalHub, serve

ROOT = Path(__file__).resolve().parent.parent
CODE = Path(os.environ.get("QUANTIZE_FAULTS_CODE", ROOT))  # the checkout whose publish runs (bench's --code)
TOKEN = "hf_local_test_token_5bd0a1"
REPO_GPTQ, REPO_GGUF = "tester/tiny-mistral-GPTQ", "tester/tiny-mistral-GGUF"
BRANCHES = {
    "gptq-4bit-32g-actorder_True": REPO_GPTQ,
    "gptq-8bit-32g-actorder_True": REPO_GPTQ,
    "gguf-q8_0": REPO_GGUF,
    "gguf-i1-q4_k_m": REPO_GGUF,
}
DEFAULT = "gptq-4bit-32g-actorder_True"  # the GPTQ repo's main
MOVED_TEXT = "the branch moved since it was listed"
# A slow remote for the kill trials: every push or commit to the default's branch takes this long on the remote's
# side, longer than a rerun takes to start, so a kill there leaves a write in flight that lands during the rerun
# (an orphaned `git push`, a commit the hub finishes after its client died): the case that once made the rerun
# report another writer.
SLOW_SECONDS = 5.0
FAMILY = [
    {
        "format": "gptq",
        "matrix": {"bits": [4, 8], "group_size": [32]},
        "include": [{"bits": 4, "group_size": 32, "default": True}],
    },
    {"format": "gguf", "matrix": {"quant_type": ["Q8_0", "Q4_K_M"]}},
]


@dataclass
class Family:
    """A built, checked and carded out folder: what each branch must hold once published."""

    config: Path
    out: Path

    def branch_files(self, branch: str) -> dict[str, bytes]:
        import json

        folder = self.out / branch
        report = json.loads((folder / "report.json").read_text())
        files = {f["path"]: (folder / f["path"]).read_bytes() for f in report["files"]}
        files["quantize.json"] = (folder / "quantize.json").read_bytes()  # the manifest `card` wrote
        card = self.out / "cards" / BRANCHES[branch].replace("/", "__")
        files.update({name: (card / name).read_bytes() for name in ("README.md", "comparison.png")})
        return files

    def expected(self) -> dict[tuple[str, str], dict[str, bytes]]:
        """(repo, branch) -> files, main included (the GGUF repo's main: every GGUF file and the card)."""
        out = {(repo, branch): self.branch_files(branch) for branch, repo in BRANCHES.items()}
        out[(REPO_GPTQ, "main")] = self.branch_files(DEFAULT)
        gguf_main: dict[str, bytes] = {}
        for branch, repo in BRANCHES.items():
            if repo == REPO_GGUF:  # each variant's manifest at its own path on the shared branch
                files = self.branch_files(branch)
                files[f"quantize/{branch}.json"] = files.pop("quantize.json")
                gguf_main.update(files)
        out[(REPO_GGUF, "main")] = gguf_main
        return out


def build_family(work: Path, base: Path, samples: int = 8) -> Family:
    """Build, check and card the four variants (calibration `samples` sets the version: 6 makes other bytes)."""
    from conftest import run_cli, write_config

    config = write_config(work, base, FAMILY)
    if samples != 8:
        recipe = work / "calibration" / "tiny.yaml"
        recipe.write_text(yaml.safe_dump({**yaml.safe_load(recipe.read_text()), "samples": samples}))
    out = work / "out"
    run_cli("build", "--config", str(config), "--out", str(out), "--all", check=True)
    run_cli("card", "--config", str(config), "--out", str(out), check=True)
    return Family(config, out)


# -- remotes ----------------------------------------------------------------------------------------------------------


class Remote:
    """One remote a trial publishes to: fresh, or holding an older version, readable by a plain client."""

    transport: str

    def args(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """What a publish to this remote needs in its environment."""
        return {}

    def read(self, repo: str, branch: str) -> dict[str, bytes] | None:
        """The branch's files (no .gitattributes), or None when it does not exist."""
        raise NotImplementedError


class GitRemote(Remote):
    transport = "git"

    def __init__(self, root: Path, slow: bool = False):
        self.root, self.slow = root, slow

    def args(self) -> list[str]:
        return ["--git", str(self.root)]

    def env(self) -> dict[str, str]:
        """A slow remote: a pre-receive hook in every bare repository, those there now and those publish
        creates (`git init` copies GIT_TEMPLATE_DIR's hooks; git drops config given by environment for the
        receive-pack of a local push, so core.hooksPath cannot carry it)."""
        if not self.slow:
            return {}
        template = self.root.parent / "git-template"
        script = f"#!/bin/sh\ngrep -q 'refs/heads/{DEFAULT}$' && sleep {SLOW_SECONDS}\nexit 0\n"
        for hooks in [template / "hooks", *(p / "hooks" for p in self.root.glob("models/*/*"))]:
            hooks.mkdir(parents=True, exist_ok=True)
            (hooks / "pre-receive").write_text(script)
            (hooks / "pre-receive").chmod(0o755)
        return {"GIT_TEMPLATE_DIR": str(template)}

    def _git(self, repo: str, *args: str) -> subprocess.CompletedProcess:
        bare = self.root / "models" / repo
        return subprocess.run(["git", "--git-dir", str(bare), *args], capture_output=True)

    def read(self, repo: str, branch: str) -> dict[str, bytes] | None:
        if not (self.root / "models" / repo / "HEAD").exists():
            return None
        listed = self._git(repo, "ls-tree", "-r", "-z", "--name-only", f"refs/heads/{branch}")
        if listed.returncode != 0:
            return None
        paths = [p for p in listed.stdout.decode().split("\0") if p and p != ".gitattributes"]
        return {p: self._git(repo, "cat-file", "blob", f"refs/heads/{branch}:{p}").stdout for p in paths}


class HttpRemote(Remote):
    transport = "http"

    def __init__(self, hub: LocalHub):
        self.hub = hub

    def args(self) -> list[str]:
        return ["--endpoint", self.hub.url]

    def read(self, repo: str, branch: str) -> dict[str, bytes] | None:
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError

        api = HfApi(endpoint=self.hub.url, token=False)
        try:
            head = api.model_info(repo, revision=branch).sha
            paths = [f.path for f in api.list_repo_tree(repo, revision=head, recursive=True) if hasattr(f, "size")]
        except HfHubHTTPError:
            return None
        cache = self.hub.root / "reader-cache"
        return {
            p: Path(hf_hub_download(repo, p, revision=head, endpoint=self.hub.url, cache_dir=cache)).read_bytes()
            for p in paths
            if p != ".gitattributes"
        }


@contextmanager
def remote(kind: str, where: Path, start: Remote | None = None, slow: bool = False) -> Iterator[Remote]:
    """A fresh remote of `kind` in `where`; with `start`, a copy of what that remote holds (an older version).
    `slow`: writes to the default's branch take SLOW_SECONDS on the remote's side."""
    if kind == "git":
        root = where / "mirror"
        if start is not None:
            assert isinstance(start, GitRemote)
            shutil.copytree(start.root, root)
        yield GitRemote(root, slow)
        return
    with serve(where / "hub", TOKEN) as hub:
        if start is not None:
            assert isinstance(start, HttpRemote)
            hub.repos = copy.deepcopy(start.hub.repos)
            for blob in start.hub.blobs.iterdir():
                shutil.copy2(blob, hub.blobs / blob.name)
        if slow:
            hub.slow[("commit", DEFAULT)] = SLOW_SECONDS
        yield HttpRemote(hub)


# -- running publish --------------------------------------------------------------------------------------------------


def publish_cmd(family: Family, target: Remote, *select: str) -> list[str]:
    chosen = list(select) or ["--all"]
    return [
        sys.executable,
        "-m",
        "quantize",
        "publish",
        "--config",
        str(family.config),
        "--out",
        str(family.out),
        *chosen,
        *target.args(),
    ]


def publish_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(CODE),
        "HF_TOKEN": TOKEN,
        "QUANTIZE_HUB_BACKOFF": "0.05",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        **extra,
    }


def carded(family: Family, target: Remote) -> None:
    """The family's cards written for `target` (publish refuses cards whose links name another destination)."""
    from conftest import cards_for

    cards_for(family.config, family.out, *target.args())


def run_publish(family: Family, target: Remote, *select: str, timeout: float = 300, **env: str):
    carded(family, target)
    return subprocess.run(
        publish_cmd(family, target, *select),
        capture_output=True,
        text=True,
        cwd=CODE,  # `-m` puts the working directory first on sys.path
        env=publish_env(**target.env(), **env),
        timeout=timeout,
    )


def killed_publish(family: Family, target: Remote, after: float, group: bool) -> str:
    """Start a publish and SIGKILL it `after` seconds in: its process alone (its git children live on,
    as when a runner kills the job's main process) or its whole process group (a cancelled CI job).
    What it had logged, for the table's note on where it was cut."""
    carded(family, target)
    proc = subprocess.Popen(
        publish_cmd(family, target),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=CODE,  # `-m` puts the working directory first on sys.path
        env=publish_env(**target.env()),
        start_new_session=True,
    )
    try:
        proc.wait(timeout=after)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    out, _ = proc.communicate()
    return out


# -- what a reader may see --------------------------------------------------------------------------------------------


def mixed(target: Remote, new: Family, old: Family | None) -> list[str]:
    """Branches a plain client sees in a state no complete publish leaves: each must hold nothing yet, or
    exactly one version's files (old or new); the GGUF repo's main, shared by every GGUF variant, holds
    per file either version's bytes."""
    versions = [new.expected()] + ([old.expected()] if old else [])
    problems = []
    for (repo, branch), _files in new.expected().items():
        seen = target.read(repo, branch)
        if not seen:
            continue
        if repo == REPO_GGUF and branch == "main":
            bad = [p for p, data in seen.items() if all(v[(repo, branch)].get(p) != data for v in versions)]
            if bad:
                problems.append(f"{repo}@{branch}: {', '.join(sorted(bad))} match no version")
        elif all(seen != v[(repo, branch)] for v in versions):
            problems.append(f"{repo}@{branch}: {len(seen)} files that are not one version's")
    return problems


def differs_from(target: Remote, family: Family) -> list[str]:
    """Branches that do not hold exactly `family`'s files."""
    return [
        f"{repo}@{branch}"
        for (repo, branch), files in family.expected().items()
        if (target.read(repo, branch) or {}) != files
    ]


@dataclass
class Outcome:
    """One row of the fault table: trials of one fault, how many converged, how many lost data."""

    fault: str
    trials: int = 0
    survived: int = 0
    lost: int = 0
    cut_mid_upload: int = 0  # kills that landed after the killed run had begun sending
    notes: list[str] = field(default_factory=list)

    def add(self, problems: list[str], killed_output: str = "") -> None:
        self.trials += 1
        self.cut_mid_upload += "uploading" in killed_output
        if problems:
            self.lost += 1
            self.notes.extend(problems[:3])
        else:
            self.survived += 1


def converge(family: Family, target: Remote, old: Family | None, **env: str) -> list[str]:
    """After a broken publish, one more must exit 0, say nothing of another writer and leave the new version."""
    proc = run_publish(family, target, **env)
    problems = [] if proc.returncode == 0 else [f"rerun exited {proc.returncode}: {proc.stderr.strip()[-300:]}"]
    if MOVED_TEXT in proc.stderr:
        problems.append("rerun told of another writer, and there was none")
    return problems + [f"after the rerun {b} is not the new version" for b in differs_from(target, family)]


def publish_seconds(family: Family, kind: str, where: Path) -> float:
    """How long one whole publish takes on a fresh slow remote: the span the kill points are spread over."""
    with remote(kind, where, slow=True) as target:
        start = time.monotonic()
        proc = run_publish(family, target)
        assert proc.returncode == 0, proc.stderr
        return time.monotonic() - start


def kill_trials(new: Family, old: Family, kind: str, work: Path, points: int, seconds: float) -> list[Outcome]:
    """SIGKILL at `points` moments spread over a publish's run, on a fresh remote and on one holding `old`,
    both slow (see SLOW_SECONDS)."""
    rows = [Outcome(f"{kind}: SIGKILL mid-publish, fresh remote"), Outcome(f"{kind}: SIGKILL mid-publish, old version")]
    with remote(kind, work / "template") as template:
        proc = run_publish(old, template)
        assert proc.returncode == 0, proc.stderr
        for i in range(points):
            after = seconds * (i + 0.5) / points
            for row, start in zip(rows, (None, template), strict=True):
                where = work / f"{kind}-{i}-{'old' if start else 'fresh'}"
                with remote(kind, where, start, slow=True) as target:
                    output = killed_publish(new, target, after, group=i % 2 == 1)
                    row.add(mixed(target, new, old) + converge(new, target, old), output)
                shutil.rmtree(where, ignore_errors=True)
    return rows


SHARDS = (
    ["--variant", "gptq-4bit-32g"],
    ["--variant", "gptq-8bit-32g", "--variant", "gguf-q8_0"],
    ["--variant", "gguf-i1-q4_k_m"],
)


def concurrent_trials(new: Family, kind: str, work: Path, trials: int) -> Outcome:
    """Three publishes of different variants at once (both repos' main shared): all exit 0, or one reports a
    conflict and one rerun converges; the remote then holds every variant and the one card."""
    row = Outcome(f"{kind}: 3 shards publishing at once")
    for i in range(trials):
        where = work / f"{kind}-shards-{i}"
        with remote(kind, where) as target:
            carded(new, target)  # once, before any starts: the three read the same card files
            procs = [
                subprocess.Popen(
                    publish_cmd(new, target, *shard),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    cwd=CODE,  # `-m` puts the working directory first on sys.path
                    env=publish_env(),
                )
                for shard in SHARDS
            ]
            results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
            failed = [err for rc, err in results if rc != 0]
            problems = [f"{len(failed)} shards failed: {failed[0].strip()[-200:]}"] if len(failed) > 1 else []
            if failed and MOVED_TEXT not in failed[0]:
                problems.append(f"a shard failed without a conflict: {failed[0].strip()[-200:]}")
            problems += (
                converge(new, target, None)
                if failed
                else [f"{b} is not the new version" for b in differs_from(target, new)]
            )
            row.add(problems)
        shutil.rmtree(where, ignore_errors=True)
    return row


@dataclass(frozen=True)
class HubFault:
    """A fault the local hub injects, and what publish must do with it: retry (exit 0) or refuse in one line."""

    name: str
    inject: Callable[[LocalHub], None]
    refused: bool = False
    env: dict[str, str] = field(default_factory=dict)


def hub_fault_trials(new: Family, old: Family, work: Path, faults: list[HubFault]) -> list[Outcome]:
    """Each fault on a remote holding `old`: the publish retries or refuses in one line, a plain client never
    sees a branch that is not one version, and one more publish after the fault clears converges."""
    rows = []
    with remote("http", work / "template") as template:
        assert run_publish(old, template).returncode == 0
        for fault in faults:
            row = Outcome(f"http: {fault.name}")
            where = work / f"fault-{len(rows)}"
            with remote("http", where, template) as target:
                assert isinstance(target, HttpRemote)
                fault.inject(target.hub)
                proc = run_publish(new, target, **fault.env)
                errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
                problems = []
                if fault.refused:
                    if proc.returncode != 1 or len(errors) != 1:
                        problems.append(f"expected one refusal line, got exit {proc.returncode}: {errors}")
                elif proc.returncode != 0:
                    problems.append(f"not retried: {proc.stderr.strip()[-300:]}")
                target.hub.faults.clear()
                row.add(problems + mixed(target, new, old) + converge(new, target, old))
                row.notes.extend(errors[-1:] if fault.refused else [])
            shutil.rmtree(where, ignore_errors=True)
            rows.append(row)
    return rows


def hub_faults() -> list[HubFault]:
    """The faults of the table: each once, on the call where it hurts most."""
    from localhub import Fault

    def on(route: str, *faults: Fault) -> Callable[[LocalHub], None]:
        return lambda hub: hub.inject(route, *faults)

    return [
        HubFault("connection dropped mid-LFS upload", on("lfs_upload", Fault(drop_after=4096))),
        HubFault("500 on the commit", on("commit", Fault(status=500))),
        HubFault("500 on the commit, after it landed", on("commit", Fault(status=500, applied=True))),
        HubFault("503 on the commit, twice", on("commit", Fault(status=503), Fault(status=503))),
        HubFault("429 with Retry-After: 1 on the commit", on("commit", Fault(status=429, retry_after=1))),
        HubFault(
            "429 with Retry-After: 3600 on the commit", on("commit", Fault(status=429, retry_after=3600)), refused=True
        ),
        HubFault(
            "commit answered after the client's timeout (it landed)",
            on("commit", Fault(status=None, delay=3.0)),
            env={"QUANTIZE_HUB_TIMEOUT": "1"},
        ),
        HubFault("preupload lies: weights already there", on("preupload", Fault(status=None, lie=True)), refused=True),
        HubFault("503 on preupload and LFS batch", on("preupload", Fault(status=503)), env={}),
    ]


def tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and mtime: what "nothing else was touched" compares."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def damage_cases(family: Family) -> list[tuple[str, str, Callable[[Path], Path]]]:
    """(what, variant, damage): each damages a copy of the out folder and returns the file it damaged."""

    def bad_json(out: Path) -> Path:
        path = out / "gguf-q8_0" / "report.json"
        path.write_text(path.read_text()[:200])
        return path

    def truncated(out: Path) -> Path:
        path = out / "gguf-q8_0" / "tiny-mistral.Q8_0.gguf"
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
        return path

    def no_report(out: Path) -> Path:  # a copy from another host that stopped before report.json arrived
        (out / "gguf-q8_0" / "report.json").unlink()
        return out / "gguf-q8_0"

    def unreadable(out: Path) -> Path:
        path = out / "gguf-q8_0" / "report.json"
        path.unlink()
        path.mkdir()  # a name that cannot be read as a file, whoever runs it (root reads mode-000 files)
        return path

    return [
        ("report.json not valid JSON", "gguf-q8_0", bad_json),
        ("model file shorter than report.json says", "gguf-q8_0", truncated),
        ("variant folder without report.json", "gguf-q8_0", no_report),
        ("report.json unreadable", "gguf-q8_0", unreadable),
    ]


def damaged_trials(family: Family, work: Path) -> list[Outcome]:
    """Each damage, then check, publish, card and report: exit 1, one error line naming the damaged file and
    `build --force --variant`, and neither the out folder nor a remote touched."""
    from conftest import run_cli

    rows = []
    for i, (what, variant, damage) in enumerate(damage_cases(family)):
        row = Outcome(f"damaged output: {what}")
        out = work / f"damaged-{i}"
        shutil.copytree(family.out, out)
        path = damage(out)
        before = tree_state(out)
        mirror = work / f"damaged-{i}-mirror"
        common = ["--config", str(family.config), "--out", str(out)]
        for command in (
            ["check", "--variant", variant, *common],
            ["publish", "--variant", variant, *common, "--git", str(mirror)],
            ["card", *common],
            ["report", *common],
        ):
            proc = run_cli(*command)
            last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
            problems = []
            if proc.returncode != 1 or not last.startswith("error:") or str(path) not in last:
                problems.append(f"{command[0]}: exit {proc.returncode}, {last[-200:]!r}")
            elif f"build --force --variant {variant}" not in last:
                problems.append(f"{command[0]}: the error does not say what to run: {last[-200:]!r}")
            if tree_state(out) != before or mirror.exists():
                problems.append(f"{command[0]}: touched the out folder or the remote")
            row.add(problems)
        rows.append(row)
        shutil.rmtree(out, ignore_errors=True)
    return rows


def table(rows: list[Outcome]) -> str:
    """The fault table, Markdown: fault, trials, survived, data lost."""
    lines = ["| fault | trials | survived | data lost |", "|---|---:|---:|---:|"]
    for r in rows:
        cut = f" (killed after sending began: {r.cut_mid_upload})" if r.cut_mid_upload else ""
        lines.append(f"| {r.fault}{cut} | {r.trials} | {r.survived} | {r.lost} |")
    return "\n".join(lines)
