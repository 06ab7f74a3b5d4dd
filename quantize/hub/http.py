"""The HTTP transport: a hub's API through `huggingface_hub.HfApi`, with retries and plain errors.

Transient failures (429, 5xx, dropped connections, timeouts) are retried with exponential
backoff, or after the wait a 429's Retry-After asks for (refused in one line when that is
longer than RETRY_AFTER_MAX); 401/403 become one line that says how to log in, HF_HUB_OFFLINE one that says
to unset it (it is not transient), and 412 (the branch moved past the `parent_commit`
we listed) one that says to re-run. The token is read by huggingface_hub from HF_TOKEN
or the saved login and is never formatted into a message.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import httpx2  # huggingface_hub 2.x's HTTP client
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationCopy,
    CommitOperationDelete,
    HfApi,
    RepoFile,
    constants,
    get_session,
)
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from ..errors import BranchMoved, HubAuthError, PublishError
from ..weblinks import Links, default_endpoint
from .publish import KEEP, MOVED, Listing, LocalFile, RemoteFile

log = logging.getLogger(__name__)

T = TypeVar("T")
TRANSIENT = {408, 429, 500, 502, 503, 504}
ATTEMPTS = 5
TIMEOUT = 300.0  # seconds without a byte from the hub before a call counts as failed (QUANTIZE_HUB_TIMEOUT)
RETRY_AFTER_MAX = 120.0  # seconds: a hub asking for a longer wait is refused in one line, not slept through


def _status(err: Exception) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _retry_after(err: Exception) -> float:
    """The seconds a 429's Retry-After header asks for (0 without one, or with an HTTP date we do not parse)."""
    headers = getattr(getattr(err, "response", None), "headers", None) or {}
    try:
        return max(0.0, float(headers.get("Retry-After", 0)))
    except ValueError:
        return 0.0


def _transient(err: Exception) -> bool:
    if isinstance(err, HfHubHTTPError):
        return _status(err) in TRANSIENT
    return isinstance(err, (httpx2.TransportError, ConnectionError, TimeoutError))


class HubTransport:
    name = "http"

    def __init__(self, endpoint: str | None = None, token: str | None = None, backoff: float | None = None):
        self.where = (endpoint or default_endpoint()).rstrip("/")
        self.links = Links.endpoint(self.where)
        self._token = token  # None: huggingface_hub's own lookup (HF_TOKEN, saved login)
        self.api = HfApi(endpoint=self.where, token=token)
        self.backoff = float(os.environ.get("QUANTIZE_HUB_BACKOFF", 2.0)) if backoff is None else backoff
        # huggingface_hub's shared client waits forever by default: a hub that stops answering would hang a CI
        # job until its own limit. A timeout makes it a transient failure, retried like a 503.
        timeout = float(os.environ.get("QUANTIZE_HUB_TIMEOUT", TIMEOUT))
        get_session().timeout = httpx2.Timeout(timeout, connect=min(timeout, 30.0))
        if urlsplit(self.where).hostname not in ("huggingface.co", "hf.co"):
            # Another hub (a local one, a private deployment) may not speak Xet; LFS works everywhere.
            constants.HF_HUB_DISABLE_XET = True

    def _scrub(self, text: str) -> str:
        token = self._token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
        return text.replace(token, "***") if token else text

    def _call(self, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as err:
                if isinstance(err, OfflineModeIsEnabled):  # a ConnectionError, but retrying cannot help
                    raise PublishError(
                        f"{self.where}: {what}: HF_HUB_OFFLINE is set, so huggingface_hub makes no "
                        "network calls; fix: unset HF_HUB_OFFLINE (or publish to a local mirror "
                        "with --git ROOT)"
                    ) from None
                status = _status(err)
                if status == 412:
                    raise BranchMoved(f"{self.where}: {what}: {MOVED}") from None
                if status in (401, 403):
                    raise HubAuthError(
                        f"{self.where}: {what}: authentication failed (HTTP {status}); fix: log in with "
                        "`hf auth login` or set HF_TOKEN to a token with write access to the repo"
                    ) from None
                if not _transient(err):
                    detail = self._scrub(str(err).splitlines()[0] if str(err) else type(err).__name__)
                    raise PublishError(f"{self.where}: {what} failed: {detail}") from None
                if attempt == ATTEMPTS:
                    raise PublishError(
                        f"{self.where}: {what} still failing after {ATTEMPTS} attempts "
                        f"({status or type(err).__name__}); try again later"
                    ) from None
                delay = self.backoff * 2 ** (attempt - 1)
                if status == 429:
                    asked = _retry_after(err)
                    if asked > RETRY_AFTER_MAX:
                        raise PublishError(
                            f"{self.where}: {what}: rate limited (HTTP 429), and the hub asks to wait "
                            f"{asked:.0f} s; nothing was changed, try again later"
                        ) from None
                    delay = max(delay, asked)
                log.warning(
                    "%s: %s (%s); retrying in %.0f s (%d/%d)",
                    what,
                    status or type(err).__name__,
                    "transient",
                    delay,
                    attempt,
                    ATTEMPTS - 1,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def prepare(self, repo: str, branch: str) -> None:
        """The repo, and the branch if it is new: started at the repo's first commit (only .gitattributes),
        not at main, so that until our commit lands a reader of the branch sees no files, never main's
        (another variant's) under this variant's name."""
        self._call(f"create {repo}", self.api.create_repo, repo, repo_type="model", exist_ok=True)
        if branch == "main":
            return
        refs = self._call(f"list branches of {repo}", self.api.list_repo_refs, repo, repo_type="model")
        if branch in {b.name for b in refs.branches}:
            return
        commits = self._call(f"list commits of {repo}", lambda: list(self.api.list_repo_commits(repo, revision="main")))
        self._call(
            f"create branch {branch} of {repo}",
            self.api.create_branch,
            repo,
            branch=branch,
            revision=commits[-1].commit_id,
            repo_type="model",
            exist_ok=True,
        )

    def listing(self, repo: str, branch: str) -> Listing:
        """The branch head, then the tree at that commit: the files are exactly those `parent_commit` will name."""
        head = self._call(f"read {repo}@{branch}", self.api.model_info, repo, revision=branch).sha
        entries = self._call(
            f"list {repo}@{branch}",
            lambda: list(self.api.list_repo_tree(repo, revision=head or branch, recursive=True, repo_type="model")),
        )
        out = {}
        for e in entries:
            if isinstance(e, RepoFile):  # folders (RepoFolder) have no size
                out[e.path] = RemoteFile(
                    path=e.path, size=e.size, sha256=e.lfs.sha256 if e.lfs else None, oid=e.blob_id
                )
        return Listing(head, out)

    def commit(
        self, repo: str, branch: str, parent: str | None, add: list[LocalFile], delete: list[str], message: str
    ) -> str:
        def send():  # fresh operations each attempt: huggingface_hub marks them as used
            ops = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(f.source)) for f in add]
            ops += [CommitOperationDelete(path_in_repo=p) for p in delete]
            return self.api.create_commit(
                repo, operations=ops, commit_message=message, revision=branch, parent_commit=parent, repo_type="model"
            )

        oid = self._call(f"upload to {repo}@{branch}", send).oid
        if parent is not None and oid == parent:
            # huggingface_hub drops the files a preupload answer calls unchanged or ignored, and makes no
            # commit when none is left, answering with the head it started from; we sent only what differs.
            raise PublishError(
                f"{self.where}: upload to {repo}@{branch}: the hub made no commit: its preupload answer said "
                "every file was already there or to be ignored, yet the branch lacks them; nothing was changed; "
                "fix: re-run publish, and tell the hub's operators if it repeats"
            )
        return oid

    def restore(self, repo: str, branch: str, head: str, to: Listing) -> str | None:
        """A commit on `head` that deletes what `to` lacks and copies back, from `to`'s commit, what differs
        (LFS files by reference: nothing is uploaded again)."""
        if to.head is None:  # never, once prepare made the branch; kept for the protocol
            self._call(f"delete branch {branch} of {repo}", self.api.delete_branch, repo, branch=branch)
            return None
        now = self.listing(repo, branch)

        def send():
            gone = [p for p in now.files if p not in to.files and p not in KEEP]
            ops: list = [CommitOperationDelete(path_in_repo=p) for p in gone]
            ops += [
                CommitOperationCopy(src_path_in_repo=p, path_in_repo=p, src_revision=to.head)
                for p, f in to.files.items()
                if now.files.get(p) != f
            ]
            return self.api.create_commit(
                repo,
                operations=ops,
                commit_message=f"undo {head[:12]}: it did not verify",
                revision=branch,
                parent_commit=head,
                repo_type="model",
            )

        return self._call(f"undo on {repo}@{branch}", send).oid
