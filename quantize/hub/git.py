"""The git transport: the same publish over plain git, for users without the HTTP API.

A remote root is either a local folder, laid out as a hub mirror
(`ROOT/models/OWNER/NAME`, bare repositories created on first push, which
`python -m quantize serve` exposes to huggingface_hub clients), or a git URL prefix
(`ssh://git@host/models`, `https://huggingface.co`) to which `/OWNER/NAME` is appended.
Commits are built with git plumbing in a scratch repository in the cache (no working
tree, no checkout of other branches) on the head seen when listing and pushed by commit
id without force, so a branch another writer moved meanwhile is refused, not overwritten.
Publishes running at once on one machine share that scratch repository, so each operation
holds its lock (`.NAME.lock` beside it): git's own ref locks would otherwise refuse the
second fetch of the same remote ref.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import BranchMoved, PublishError
from ..paths import cache_dir, exclusive
from ..weblinks import Links, is_url
from .publish import MOVED, Listing, LocalFile, RemoteFile

log = logging.getLogger(__name__)

IDENTITY = {
    "GIT_AUTHOR_NAME": "quantize",
    "GIT_AUTHOR_EMAIL": "quantize@localhost",
    "GIT_COMMITTER_NAME": "quantize",
    "GIT_COMMITTER_EMAIL": "quantize@localhost",
}
HUB_LFS_LIMIT = 10 * 1024 * 1024  # huggingface.co rejects plain git blobs above this


def redact(text: str) -> str:
    """URLs may carry credentials (https://user:token@host): never print them."""
    return re.sub(r"(://)[^/@\s]+@", r"\1***@", text)


class GitTransport:
    name = "git"

    def __init__(self, root: str | Path):
        if shutil.which("git") is None:
            raise PublishError("git is not installed; fix: install git, or publish over HTTP without --git")
        self.root = str(root)
        self.local = not is_url(self.root)
        self.where = redact(self.root if not self.local else str(Path(self.root).resolve()))
        self.links = Links.git(self.root)
        self.scratch = cache_dir() / "git-scratch"

    def url(self, repo: str) -> str:
        if self.local:
            return str(Path(self.root).resolve() / "models" / repo)
        return f"{self.root.rstrip('/')}/{repo}"

    def _git(
        self,
        *args: str,
        git_dir: Path | None = None,
        env: dict | None = None,
        check: bool = True,
        stdin: str | None = None,
    ) -> str:
        cmd = ["git"] + (["--git-dir", str(git_dir)] if git_dir else []) + list(args)
        done = subprocess.run(
            cmd, capture_output=True, text=True, input=stdin, env={**os.environ, **IDENTITY, **(env or {})}
        )
        if check and done.returncode != 0:
            what = redact(" ".join(a for a in args if not a.startswith("-")))[:120]
            lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("hint:")]
            raise PublishError(f"git {what}: {redact(lines[-1] if lines else 'failed')}")
        return done.stdout

    def _lock(self, repo: str):
        """The scratch repository's lock (see the module's docstring), taken before it is created or used."""
        return exclusive(self.scratch / repo.replace("/", "__"))

    def _scratch(self, repo: str) -> Path:
        path = self.scratch / repo.replace("/", "__")
        if not (path / "HEAD").exists():
            path.mkdir(parents=True, exist_ok=True)
            self._git("init", "--quiet", "--bare", str(path))
        return path

    def _head(self, repo: str, branch: str) -> str | None:
        """Fetch the branch into the scratch repository; its commit id, or None when it does not exist."""
        scratch = self._scratch(repo)
        line = self._git("ls-remote", self.url(repo), f"refs/heads/{branch}", git_dir=scratch).split()
        if not line:
            return None
        self._git(
            "fetch",
            "--quiet",
            "--no-tags",
            self.url(repo),
            f"+refs/heads/{branch}:refs/remotes/r/{branch}",
            git_dir=scratch,
        )
        return line[0]

    def prepare(self, repo: str, branch: str) -> None:
        if self.local:
            bare = Path(self.url(repo))
            if (bare / "HEAD").exists():
                return
            # Made aside and renamed into place: shards publishing at once each find the repository absent, and
            # two `git init`s in one folder fail ("could not set 'core.repositoryformatversion'", 1 run in 20).
            bare.parent.mkdir(parents=True, exist_ok=True)
            aside = bare.parent / f".{bare.name}.init-{os.getpid()}"
            shutil.rmtree(aside, ignore_errors=True)
            self._git("init", "--quiet", "--bare", "--initial-branch=main", str(aside))
            try:
                os.rename(aside, bare)  # replaces an empty folder; fails when another process's repository is there
            except OSError:
                shutil.rmtree(aside, ignore_errors=True)
                if not (bare / "HEAD").exists():
                    raise
                return
            log.info("created %s", bare)

    def listing(self, repo: str, branch: str) -> Listing:
        with self._lock(repo):
            return self._listing(repo, branch)

    def _listing(self, repo: str, branch: str) -> Listing:
        head = self._head(repo, branch)
        if head is None:
            return Listing(None, {})
        out = {}
        for line in self._git("ls-tree", "-r", "-l", "-z", head, git_dir=self._scratch(repo)).split("\0"):
            if line:
                meta, path = line.split("\t", 1)
                _mode, _kind, oid, size = meta.split()
                out[path] = RemoteFile(path=path, size=int(size), sha256=None, oid=oid)
        return Listing(head, out)

    def commit(
        self, repo: str, branch: str, parent: str | None, add: list[LocalFile], delete: list[str], message: str
    ) -> str:
        if not self.local and "huggingface.co" in self.root:
            big = [f.path for f in add if f.size > HUB_LFS_LIMIT]
            if big:
                raise PublishError(
                    f"{self.where}: {', '.join(big)} exceed 10 MB, which the hub only takes through "
                    "LFS; fix: publish over HTTP (drop --git), which uploads large files for you"
                )
        with self._lock(repo):  # `parent` was fetched into the scratch repository by listing()
            return self._commit(self._scratch(repo), repo, branch, parent, add, delete, message)

    def _commit(
        self,
        scratch: Path,
        repo: str,
        branch: str,
        parent: str | None,
        add: list[LocalFile],
        delete: list[str],
        message: str,
    ) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            if parent:
                self._git("read-tree", parent, git_dir=scratch, env=env)
            if delete:  # mode 0 removes an entry; --force-remove would want a work tree, and scratch is bare
                self._git(
                    "update-index",
                    "--index-info",
                    git_dir=scratch,
                    env=env,
                    stdin="".join(f"0 {'0' * 40}\t{path}\n" for path in delete),
                )
            for f in add:
                oid = self._git("hash-object", "-w", str(f.source), git_dir=scratch).strip()
                self._git("update-index", "--add", "--cacheinfo", f"100644,{oid},{f.path}", git_dir=scratch, env=env)
            tree = self._git("write-tree", git_dir=scratch, env=env).strip()
        commit = self._git(
            "commit-tree", tree, *(["-p", parent] if parent else []), "-m", message, git_dir=scratch
        ).strip()
        try:  # no force: the remote takes it only if the branch is still `parent` (or a new branch still absent)
            self._git("push", "--quiet", self.url(repo), f"{commit}:refs/heads/{branch}", git_dir=scratch)
        except PublishError:
            line = self._git("ls-remote", self.url(repo), f"refs/heads/{branch}", git_dir=scratch).split()
            if (line[0] if line else None) != parent:
                raise BranchMoved(f"{self.where}: push to {repo}@{branch}: {MOVED}") from None
            raise
        return commit

    def restore(self, repo: str, branch: str, head: str, to: Listing) -> str | None:
        """A commit on `head` with `to`'s tree, pushed without force; a branch `to` did not have is deleted,
        only if it is still at `head`."""
        with self._lock(repo):
            scratch = self._scratch(repo)
            if to.head is None:
                self._git(
                    "push",
                    "--quiet",
                    f"--force-with-lease=refs/heads/{branch}:{head}",
                    self.url(repo),
                    f":refs/heads/{branch}",
                    git_dir=scratch,
                )
                return None
            tree = self._git("rev-parse", f"{to.head}^{{tree}}", git_dir=scratch).strip()
            undo = self._git(
                "commit-tree", tree, "-p", head, "-m", f"undo {head[:12]}: it did not verify", git_dir=scratch
            ).strip()
            self._git("push", "--quiet", self.url(repo), f"{undo}:refs/heads/{branch}", git_dir=scratch)
            return undo
