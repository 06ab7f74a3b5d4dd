"""`publish`: put a checked variant on its hub branch (and on `main` where it belongs), verified.

The rules live here and the wire lives in a transport (`hub_api` over the HTTP API,
`git_remote` over git): what goes where, what changed since the last push, and whether
the remote now holds exactly the bytes the variant's manifest (quantize.json, sent with
them) describes. A variant that did not
pass its checks is refused before anything is sent.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from .. import formats
from ..card import card_dir, written_for
from ..config import Project, Variant
from ..errors import BranchMoved, DamagedOutput, NotBuilt, PublishError, PublishRefused, QuantizeError
from ..hashing import file_sha256
from ..manifest import MANIFEST_NAME, Manifest, from_report, manifest_path
from ..manifest import write as write_manifest
from ..outputs import CARD_FILES, HUB_FILES, built_report, variant_folder
from ..paths import write_json
from ..records import Report, now
from ..weblinks import Links

log = logging.getLogger(__name__)

KEEP = HUB_FILES  # hub-managed files a publish never deletes
MOVED_ATTEMPTS = 5  # commits to a shared branch that another writer keeps moving, before giving up


# Why and what to do, after "WHERE: WHAT: ": both transports refuse a commit whose parent is no longer the head.
MOVED = (
    "the branch moved since it was listed (another writer committed); nothing was overwritten; "
    "fix: re-run publish, which lists the branch again"
)


@dataclass(frozen=True)
class LocalFile:
    path: str  # path in the repo
    source: Path
    size: int
    sha256: str

    def git_oid(self) -> str:
        """The git blob id of the content: what a remote lists for a file not stored in LFS."""
        digest = hashlib.sha1(b"blob %d\0" % self.size)
        with open(self.source, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files: the content's sha256
    oid: str  # git blob id (of the content, or of the LFS pointer)


@dataclass(frozen=True)
class Listing:
    """A branch's files as of one commit. `head` is the parent a commit must name, so that a branch
    another writer moved after the listing is refused instead of overwritten (None: no branch yet)."""

    head: str | None
    files: dict[str, RemoteFile]


@dataclass(frozen=True)
class Target:
    repo: str
    branch: str
    exclusive: bool  # remote files outside the set are deleted (a variant's own branch)


class Transport(Protocol):
    name: str
    where: str  # endpoint or remote root, never with credentials
    links: Links  # what a card sent here must link to

    def prepare(self, repo: str, branch: str) -> None: ...
    def listing(self, repo: str, branch: str) -> Listing: ...
    def commit(
        self, repo: str, branch: str, parent: str | None, add: list[LocalFile], delete: list[str], message: str
    ) -> str: ...  # raises BranchMoved when the branch head is no longer `parent`
    def restore(
        self, repo: str, branch: str, head: str, to: Listing
    ) -> str | None: ...  # the branch, now at `head`, holds `to`'s files again (deleted when `to.head` is None)


@dataclass(frozen=True)
class Skipped:
    """A variant `publish_all` left out, and why; `damaged` ones make the run exit non-zero."""

    variant: str
    why: str
    damaged: bool


class TargetRecord(BaseModel):
    repo: str
    branch: str
    commit: str | None  # made by this publish; with nothing to send, the previous publish's (else the head verified)
    uploaded: list[str]
    deleted: list[str]
    verified: int


class PublishRecord(BaseModel):
    """published/BRANCH.json: what the last publish of a variant sent where."""

    variant: str
    transport: str
    where: str
    inputs_hash: str
    published_at: str
    targets: list[TargetRecord]


def difference(local: LocalFile, remote: RemoteFile | None) -> str | None:
    """Why the remote file is not the local one (size, then LFS sha256 or git blob id), or None when it is."""
    if remote is None:
        return f"{local.path} is missing"
    if remote.size != local.size:
        return f"{local.path} has {remote.size} bytes, its manifest says {local.size}"
    if remote.sha256 and remote.sha256 != local.sha256:
        return f"{local.path} has sha256 {remote.sha256[:12]}..., its manifest says {local.sha256[:12]}..."
    if not remote.sha256 and remote.oid != local.git_oid():
        return f"{local.path} has different content (git blob {remote.oid[:12]}...)"
    return None


def extra(files: list[LocalFile], remote: dict[str, RemoteFile], exclusive: bool) -> list[str]:
    """Remote files that do not belong on an exclusive branch."""
    wanted = {f.path for f in files} | set(KEEP)
    return sorted(p for p in remote if exclusive and p not in wanted)


def changes(
    files: list[LocalFile], remote: dict[str, RemoteFile], exclusive: bool
) -> tuple[list[LocalFile], list[str]]:
    """What to upload and what to delete so the remote matches `files`."""
    return [f for f in files if difference(f, remote.get(f.path))], extra(files, remote, exclusive)


def mismatches(files: list[LocalFile], remote: dict[str, RemoteFile]) -> list[str]:
    return [d for f in files if (d := difference(f, remote.get(f.path)))]


def problems(files: list[LocalFile], remote: dict[str, RemoteFile], exclusive: bool) -> list[str]:
    """Why the remote is not exactly what a publish of `files` must leave (empty: it is)."""
    return mismatches(files, remote) + [f"{p} should not be there" for p in extra(files, remote, exclusive)]


def targets(variant: Variant) -> list[Target]:
    """The variant's own branch; `main` for a format's default; every GGUF file also on the GGUF repo's main."""
    return [
        Target(variant.repo, branch, exclusive=exclusive) for branch, exclusive in formats.of(variant).targets(variant)
    ]


def publishable(variant: Variant, out_root: Path) -> Report:
    """The variant's report, if it may be published; otherwise a refusal that says what to run
    (`DamagedOutput`, naming the file, when the folder is there but broken)."""
    folder = variant_folder(out_root, variant)
    report = built_report(out_root, variant)
    if report is None:
        raise NotBuilt(
            f"{variant.name}: not built in {folder}; run `python -m quantize build --variant {variant.name}`"
        )
    if report.status == "built":
        raise PublishRefused(
            f"{variant.name}: built but not checked; run `python -m quantize check --variant {variant.name}` first"
        )
    if report.status == "failed":
        failed = [v.gate for v in report.checks.verdicts if not v.passed] if report.checks else []
        raise PublishRefused(
            f"{variant.name}: failed its gates ({', '.join(failed) or 'checks'}); a variant that fails "
            "its checks is never published (fix: change the variant or its gate in eval/, rebuild, check)"
        )
    for f in report.files:
        path = folder / f.path
        if not path.is_file() or path.stat().st_size != f.size or file_sha256(path, memo=False) != f.sha256:
            raise PublishRefused(
                f"{folder / f.path}: differs from report.json since it was checked; "
                f"rebuild with `python -m quantize build --variant {variant.name} --force`"
            )
    return report


def _last_commits(path: Path, transport: Transport) -> dict[tuple[str, str], str]:
    """The commits the previous publish to the same remote made, so a republish that uploads nothing
    keeps them in its record instead of writing `commit: null` over them."""
    try:
        old = PublishRecord.model_validate_json(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: start afresh
        return {}
    if (old.transport, old.where) != (transport.name, transport.where):
        return {}
    return {(t.repo, t.branch): t.commit for t in old.targets if t.commit}


def _local_files(folder: Path, made: Manifest, card: Path, target: Target) -> list[LocalFile]:
    """What `target` must hold of this variant: the files its manifest names, the manifest (at its path for
    that branch), and the repo's card and plot."""
    files = [LocalFile(f.path, folder / f.path, f.size, f.sha256) for f in made.files]
    sources = {manifest_path(made.variant.branch, target.exclusive): folder / MANIFEST_NAME}
    sources.update({name: card / name for name in CARD_FILES})
    for name, path in sources.items():
        files.append(LocalFile(name, path, path.stat().st_size, file_sha256(path, memo=False)))
    return files


class Publisher:
    def __init__(self, project: Project, out_root: Path, transport: Transport):
        self.project, self.out_root, self.transport = project, Path(out_root), transport

    def card(self, variant: Variant) -> Path:
        """The card folder `card` wrote for the variant's repo; publish sends it as it is, never rewrites it.

        A missing card, or one that does not list the variant (written before it passed), is refused."""
        folder = card_dir(self.out_root, variant.repo)
        readme = folder / "README.md"
        fix = f"python -m quantize card --config {self.project.path} --out {self.out_root} {self.transport.links.label}"
        if not readme.is_file() or f"{variant.branch}" not in readme.read_text(encoding="utf-8"):
            state = "has no card" if not readme.is_file() else "has a card that does not list it"
            raise PublishRefused(
                f"{variant.name}: {variant.repo} {state} in {folder}", fix=f"write the cards first: {fix}"
            )
        links = written_for(folder)
        if links != self.transport.links:
            said = f"links to {links.root}" if links else "records no destination for its links"
            raise PublishRefused(
                f"{variant.name}: {readme} {said}, but this publish goes to {self.transport.links.root}",
                fix=f"write the cards for this destination: {fix}",
            )
        return folder

    def publish_all(
        self, variants: list[Variant], only_passed: bool = False, skip_unbuilt: bool = False
    ) -> tuple[list[PublishRecord], list[Skipped]]:
        """Check every variant before sending anything. One that is not publishable stops the run (every
        refusal listed), or with `only_passed` is skipped and listed; with `skip_unbuilt` (a selection, not
        names: a shard's out folder holds only its own variants) so is one that was never built."""
        reports: dict[str, Report] = {}
        skipped: list[Skipped] = []
        refused: list[QuantizeError] = []
        for v in variants:
            try:
                reports[v.name] = publishable(v, self.out_root)
                self.card(v)
            except (NotBuilt, PublishRefused, DamagedOutput) as err:
                if only_passed or (skip_unbuilt and isinstance(err, NotBuilt)):
                    log.warning("skipped %s", err)
                    skipped.append(Skipped(v.name, str(err), damaged=isinstance(err, DamagedOutput)))
                else:
                    refused.append(err)
        if len(refused) == 1:
            raise refused[0]
        if refused:
            raise PublishRefused(
                f"{len(refused)} selected variants cannot be published, so none was sent: "
                + "; ".join(str(err) for err in refused)
            )
        if not reports:
            raise PublishRefused("no selected variant has passed its checks; nothing to publish")
        return [self.publish(v, reports[v.name]) for v in variants if v.name in reports], skipped

    def publish(self, variant: Variant, report: Report) -> PublishRecord:
        """Send one variant whose `report` `publishable` has accepted, with its repo's card."""
        folder = variant_folder(self.out_root, variant)
        card = self.card(variant)
        made = from_report(report, self.project.config.base_model.id)
        write_manifest(folder, made)  # what every target is verified against, sent beside the files
        path = self.out_root / "published" / f"{variant.branch}.json"
        last = _last_commits(path, self.transport)
        message = f"{variant.name}: {report.inputs_hash[:12]}"
        records = [
            self._push(t, _local_files(folder, made, card, t), message, last.get((t.repo, t.branch)))
            for t in targets(variant)
        ]
        record = PublishRecord(
            variant=variant.name,
            transport=self.transport.name,
            where=self.transport.where,
            inputs_hash=report.inputs_hash,
            published_at=now(),
            targets=records,
        )
        write_json(path, record.model_dump(mode="json"))
        return record

    def _push(self, target: Target, files: list[LocalFile], message: str, last: str | None) -> TargetRecord:
        """Commit what differs on top of the head just listed, then verify; a commit the remote holds but
        that does not verify is undone, so no unverified head is left.

        When the branch moved between listing and commit, it is listed again. If it now holds exactly
        these files, that is convergence, not a conflict: an earlier attempt landed after all (a commit
        whose answer was lost to a timeout, a push that a killed run left running), or another writer
        sent the same bytes. Otherwise a shared branch (`main` of a GGUF repo, written by every GGUF
        variant) is committed to again on its new head, which keeps the other writer's files; a
        variant's own branch is refused, since another writer of it is a real conflict.
        With nothing to send, the record keeps `last` (the previous publish's commit), else the verified head."""
        t = self.transport
        where = f"{target.repo}@{target.branch}"
        t.prepare(target.repo, target.branch)
        commit = None
        for attempt in range(1, MOVED_ATTEMPTS + 1):
            listed = t.listing(target.repo, target.branch)
            upload, delete = changes(files, listed.files, target.exclusive)
            if not (upload or delete):
                log.info("%s: up to date, nothing uploaded", where)
                break
            size = sum(f.size for f in upload)
            log.info("%s: uploading %d file(s), %.1f MB; deleting %d", where, len(upload), size / 1e6, len(delete))
            try:
                commit = t.commit(target.repo, target.branch, listed.head, upload, delete, message)
                break
            except BranchMoved:
                moved = t.listing(target.repo, target.branch)
                if not problems(files, moved.files, target.exclusive):
                    log.info("%s: moved since listed, and now holds exactly these files; nothing left to send", where)
                    listed = moved
                    break
                if target.exclusive or attempt == MOVED_ATTEMPTS:
                    raise
                delay = random.uniform(0.2, 1.0) * attempt
                log.warning(
                    "%s: another writer committed first (a shared branch); listing again in %.1f s (%d/%d)",
                    where,
                    delay,
                    attempt,
                    MOVED_ATTEMPTS - 1,
                )
                time.sleep(delay)
        after = t.listing(target.repo, target.branch)
        found = problems(files, after.files, target.exclusive)
        if found:
            undone = self._undo(target, commit, after, listed) if commit and after.head == commit else ""
            raise PublishError(f"{t.where} {where}: after upload, {'; '.join(found)}{undone}")
        return TargetRecord(
            repo=target.repo,
            branch=target.branch,
            commit=commit or last or after.head,
            uploaded=[f.path for f in upload],
            deleted=delete,
            verified=len(files),
        )

    def _undo(self, target: Target, commit: str, after: Listing, before: Listing) -> str:
        """Put the branch back to `before` after our `commit` failed verification; what happened, for the error."""
        t = self.transport
        try:
            head = t.restore(target.repo, target.branch, commit, before)
            now = t.listing(target.repo, target.branch)
        except PublishError as err:
            return f"; undoing commit {commit[:12]} failed too ({err}): that head is unverified, re-run publish"
        if now.head != head or {p: (f.size, f.oid) for p, f in now.files.items()} != {
            p: (f.size, f.oid) for p, f in before.files.items()
        }:
            return f"; undoing commit {commit[:12]} did not restore the branch: its head is unverified, re-run publish"
        return (
            f"; the branch was put back to its files before this publish (commit {head[:12]})"
            if head
            else "; the branch, new in this publish, was deleted"
        )
