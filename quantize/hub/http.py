"""The HTTP transport: a hub's API through `huggingface_hub.HfApi`, with retries and plain errors.

Transient failures (429, 5xx, dropped connections) are retried with exponential
backoff; 401/403 become one line that says how to log in, HF_HUB_OFFLINE one that says
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

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, RepoFile, constants
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from ..errors import BranchMoved, HubAuthError, PublishError
from .publish import MOVED, Listing, LocalFile, RemoteFile

log = logging.getLogger(__name__)

T = TypeVar("T")
TRANSIENT = {408, 429, 500, 502, 503, 504}
ATTEMPTS = 5


def _status(err: Exception) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _transient(err: Exception) -> bool:
    if isinstance(err, HfHubHTTPError):
        return _status(err) in TRANSIENT
    import httpx2  # huggingface_hub 2.x's HTTP client

    return isinstance(err, (httpx2.TransportError, ConnectionError, TimeoutError))


class HubTransport:
    name = "http"

    def __init__(self, endpoint: str | None = None, token: str | None = None, backoff: float | None = None):
        self.where = (endpoint or constants.ENDPOINT).rstrip("/")
        self._token = token  # None: huggingface_hub's own lookup (HF_TOKEN, saved login)
        self.api = HfApi(endpoint=self.where, token=token)
        self.backoff = float(os.environ.get("QUANTIZE_HUB_BACKOFF", 2.0)) if backoff is None else backoff
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
        self._call(f"create {repo}", self.api.create_repo, repo, repo_type="model", exist_ok=True)
        if branch != "main":
            self._call(
                f"create branch {branch} of {repo}",
                self.api.create_branch,
                repo,
                branch=branch,
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

        return self._call(f"upload to {repo}@{branch}", send).oid
