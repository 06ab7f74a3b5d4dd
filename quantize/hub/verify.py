"""`verify`: a published branch, downloaded as any user downloads it, checked against its manifests.

What `publish` verifies is the remote's listing (sizes, LFS sha256s, git blob ids) right after it
committed. `verify` is the downloader's side, any time later and on any machine: it fetches the
branch through huggingface_hub (or clones it from a git destination), hashes every byte that
arrived, and holds the result against the `quantize.json` manifests on the branch. A file that
differs, is missing, or is there without any manifest naming it, and a manifest that lies on the
wrong branch, are each one line of the result; a branch with no manifest at all was not published
by this toolkit (or predates manifests), and that is said in one line as well.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from pydantic import BaseModel

from ..errors import VerifyError
from ..hashing import file_sha256
from ..manifest import MANIFEST_NAME, SHARED_DIR, UNLISTED, Manifest, Recheck, manifest_path, parse
from ..paths import write_json
from ..records import now
from ..weblinks import Links
from .git import GitTransport, redact

log = logging.getLogger(__name__)

LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"


class ManifestResult(BaseModel):
    path: str  # on the branch
    variant: str | None
    files: int  # named by it and checked


class VerifyRecord(BaseModel):
    """REPO__BRANCH.verify.json beside the downloaded folder: what was checked, and what was wrong."""

    repo: str
    revision: str
    source: str  # the endpoint, or the git root, never with credentials
    checked_at: str
    manifests: list[ManifestResult]
    files_checked: int
    rechecked: list[Recheck] | None = None  # `--check`: the figures measured again here
    problems: list[str]
    passed: bool


def fetch(repo: str, revision: str, dest: Path, links: Links, git: str | None = None) -> Path:
    """The branch's files in `dest`, as a user gets them: huggingface_hub from a hub, `git clone` from a git
    root (`git`, as given: a URL's credentials are used for the clone and never printed)."""
    if git is None:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            return Path(snapshot_download(repo, revision=revision, endpoint=links.root, local_dir=dest))
        except RevisionNotFoundError:
            raise VerifyError(
                f"{links.root}: {repo} has no branch {revision!r}", fix="name a published branch"
            ) from None
        except RepositoryNotFoundError:
            raise VerifyError(
                f"{links.root}: no repo {repo} (or no access)", fix="check the repo id and HF_TOKEN"
            ) from None
        except HfHubHTTPError as err:
            raise VerifyError(
                f"{links.root}: downloading {repo}@{revision} failed: {str(err).splitlines()[0]}"
            ) from None
    url = GitTransport(git).url(repo)
    if dest.exists():
        shutil.rmtree(dest)  # a clone is not updated in place: what another run left could hide a change
    dest.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["git", "clone", "--quiet", "--depth", "1", "--branch", revision, url, str(dest)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        why = redact(lines[-1] if lines else "failed")
        raise VerifyError(f"git clone --branch {revision} {links.repo(repo)}: {why}")
    return dest


def branch_files(folder: Path) -> dict[str, Path]:
    """Every file that arrived, by its path on the branch (a download's own bookkeeping left out)."""
    skip = {".git", ".cache"}
    return {
        p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not skip & set(p.relative_to(folder).parts)
    }


def misplaced(path: str, m: Manifest, revision: str) -> str | None:
    """Why the manifest at `path` does not belong on `revision` (copied from another branch), or None."""
    if path == MANIFEST_NAME:
        if m.variant.branch == revision or (revision == "main" and m.variant.default):
            return None
        return f"{path} describes {m.variant.branch}, not {revision}"
    shared = manifest_path(m.variant.branch, exclusive=False)  # where publish puts it on a shared branch
    return None if path == shared else f"{path} describes {m.variant.branch}; it belongs at {shared}"


def check_folder(folder: Path, repo: str, revision: str) -> tuple[list[ManifestResult], list[Manifest], list[str], int]:
    """(what each manifest named, the manifests read, problems, files checked) for a downloaded branch;
    VerifyError when it has no manifest."""
    files = branch_files(folder)
    found = sorted(p for p in files if p == MANIFEST_NAME or (p.startswith(f"{SHARED_DIR}/") and p.endswith(".json")))
    if not found:
        raise VerifyError(
            f"{repo}@{revision}: has no {MANIFEST_NAME} (nor {SHARED_DIR}/*.json), so there is nothing to verify "
            f"its {len(files)} file(s) against: it was not published by quantize, or before manifests were",
            fix="republish it with `python -m quantize publish`, which writes the manifest",
        )
    results, read, problems, named, checked = [], [], [], set(found) | set(UNLISTED), 0
    for path in found:
        m = parse(files[path].read_bytes())
        if m is None:
            problems.append(f"{path} is not a manifest this quantize reads")
            results.append(ManifestResult(path=path, variant=None, files=0))
            continue
        read.append(m)
        if where := misplaced(path, m, revision):
            problems.append(where)
        for f in m.files:
            named.add(f.path)
            local = files.get(f.path)
            checked += 1
            if local is None:
                problems.append(f"{f.path} is missing ({path} names it, {f.size} bytes)")
                continue
            size = local.stat().st_size
            if size != f.size:
                pointer = local.read_bytes()[: len(LFS_POINTER)] == LFS_POINTER
                why = " (an LFS pointer: install git-lfs, or verify over the hub)" if pointer else ""
                problems.append(f"{f.path} has {size} bytes, {path} says {f.size}{why}")
            elif file_sha256(local, memo=False) != f.sha256:
                problems.append(f"{f.path} has other bytes than {path} says (sha256 {f.sha256[:12]}...)")
        results.append(ManifestResult(path=path, variant=m.variant.name, files=len(m.files)))
    problems += [f"{p} is on the branch but no manifest names it" for p in files if p not in named]
    return results, read, problems, checked


def verify(
    repo: str, revision: str, out: Path, endpoint: str | None = None, git: str | None = None
) -> tuple[VerifyRecord, Path, list[Manifest]]:
    """Download `repo@revision` into OUT/REPO__REVISION and check it: the record, the folder, its manifests."""
    links = Links.destination(endpoint, git)
    dest = fetch(repo, revision, Path(out) / _stem(repo, revision), links, git)
    log.info("downloaded %s@%s into %s", repo, revision, dest)
    named, manifests, problems, checked = check_folder(dest, repo, revision)
    record = VerifyRecord(
        repo=repo,
        revision=revision,
        source=links.root,
        checked_at=now(),
        manifests=named,
        files_checked=checked,
        problems=problems,
        passed=not problems,
    )
    return record, dest, manifests


def _stem(repo: str, revision: str) -> str:
    return f"{repo.replace('/', '__')}__{revision.replace('/', '__')}"


def write_record(out: Path, record: VerifyRecord) -> Path:
    """OUT/REPO__REVISION.verify.json, beside the downloaded folder (not in it: it is not the branch's)."""
    path = Path(out) / f"{_stem(record.repo, record.revision)}.verify.json"
    write_json(path, record.model_dump(mode="json"))
    return path
