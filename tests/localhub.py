"""A small Hugging Face Hub server on 127.0.0.1 for tests of the HTTP transport.

No push-capable hub is installable here, so this speaks the endpoints `HfApi` and
`hf_hub_download` call (create repo/branch, preupload, LFS batch and upload, commit,
commits, refs, revision info, tree, paths-info, resolve) over real HTTP, storing blobs on
disk. It enforces a write token and, as the real hub does, a commit's `parentCommit` (HTTP
412 when the branch head moved past it), records every call so tests can assert the
sequence, can fail the next N calls of a route to exercise retries, can inject a `Fault`
into the next calls of a route (an error before or after the route took effect, a
Retry-After, an answer slower than the client's timeout, a connection dropped mid-body, a
preupload answer that lies), and can run a hook before a route (another writer committing
between a client's listing and its commit). It runs in a daemon thread: the `serve` context
manager shuts it down and frees the port, and it dies with the test process in any case.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_PATTERNS = (".safetensors", ".gguf", ".png", ".bin")
REGULAR_LIMIT = 1_000_000  # the real hub's limit is 10 MB; lower so tiny files also take the LFS path


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Blob:
    sha256: str
    size: int
    oid: str  # git oid of the content (regular) or of the LFS pointer
    lfs: bool


@dataclass
class Repo:
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit id
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)  # commit id -> path -> blob
    parents: dict[str, str | None] = field(default_factory=dict)  # commit id -> parent (None: the first)
    titles: dict[str, str] = field(default_factory=dict)

    def add(self, files: dict[str, Blob], parent: str | None, title: str) -> str:
        commit = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        self.commits[commit], self.parents[commit], self.titles[commit] = files, parent, title
        return commit


@dataclass(frozen=True)
class Fault:
    """What the next call of a route meets instead of a plain answer.

    `status` alone: refused before the route does anything. With `applied`, the route takes effect
    (a commit lands) and the client is told `status` instead: the hub's answer was lost. `delay`
    waits that long before serving (past the client's timeout: the client gives up, the server
    still serves). `drop_after` reads that many body bytes and closes the connection. `retry_after`
    adds the header to the error. `lie` (preupload only) answers shouldIgnore for every file but
    README.md, so huggingface_hub leaves the weights out of the commit."""

    status: int | None = 503
    applied: bool = False
    delay: float = 0.0
    drop_after: int | None = None
    retry_after: float | None = None
    lie: bool = False


def _pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class LocalHub:
    """State of the server: repos, the blob store, the call log and injected failures."""

    def __init__(self, root: Path, token: str, user: str = "tester"):
        self.root, self.token, self.user = Path(root), token, user
        self.blobs = self.root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, Repo] = {}
        self.calls: list[tuple[str, str]] = []  # (route, repo or "")
        self.fail_next: dict[str, int] = {}
        self.faults: dict[str, list[Fault]] = {}  # route -> faults for its next calls, first first
        self.slow: dict[tuple[str, str], float] = {}  # (route, revision) -> seconds every such call waits first
        self.before_next: dict[str, Callable[[], None]] = {}  # route -> run once, before the route is served
        self.tamper: set[str] = set()  # paths whose next committed content is altered (a broken hub)
        self.lock = threading.Lock()
        self.url = ""

    # -- storage ---------------------------------------------------------------------
    def store(self, data: bytes, lfs: bool) -> Blob:
        sha = hashlib.sha256(data).hexdigest()
        (self.blobs / sha).write_bytes(data)
        oid = git_oid(_pointer(sha, len(data))) if lfs else git_oid(data)
        return Blob(sha256=sha, size=len(data), oid=oid, lfs=lfs)

    def read(self, blob: Blob) -> bytes:
        return (self.blobs / blob.sha256).read_bytes()

    def create_repo(self, repo_id: str) -> bool:
        if repo_id in self.repos:
            return False
        repo = Repo()
        attributes = "".join(f"*{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)
        first = repo.add({".gitattributes": self.store(attributes.encode(), lfs=False)}, None, "initial commit")
        repo.branches["main"] = first
        self.repos[repo_id] = repo
        return True

    def write(self, repo_id: str, branch: str, files: dict[str, bytes]) -> str:
        """Commit `files` (regular blobs) on top of `branch` directly, as another writer would; the new head."""
        with self.lock:
            repo = self.repos[repo_id]
            head = repo.branches[branch]
            files_now = {**repo.commits[head], **{p: self.store(data, lfs=False) for p, data in files.items()}}
            commit = repo.add(files_now, head, "another writer")
            repo.branches[branch] = commit
            return commit

    def inject(self, route: str, *faults: Fault) -> None:
        """Faults for the next calls of `route`, in order; the calls after them are served plainly."""
        with self.lock:
            self.faults.setdefault(route, []).extend(faults)

    def files(self, repo_id: str, revision: str) -> tuple[str, dict[str, Blob]] | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        commit = repo.branches.get(revision, revision if revision in repo.commits else None)
        return None if commit is None else (commit, repo.commits[commit])


def _entry(path: str, blob: Blob) -> dict:
    entry = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
    if blob.lfs:
        entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(_pointer(blob.sha256, blob.size))}
    return entry


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("GET", "whoami", r"^/api/whoami-v2$"),
    ("POST", "create_repo", r"^/api/repos/create$"),
    ("POST", "validate_yaml", r"^/api/validate-yaml$"),
    ("GET", "repo_info", rf"^/api/models/{_REPO}/revision/(?P<rev>[^/]+)$"),
    ("GET", "refs", rf"^/api/models/{_REPO}/refs$"),
    ("GET", "commits", rf"^/api/models/{_REPO}/commits/(?P<rev>[^/]+)$"),
    ("POST", "create_branch", rf"^/api/models/{_REPO}/branch/(?P<rev>[^/]+)$"),
    ("GET", "tree", rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?P<path>/.*)?$"),
    ("POST", "paths_info", rf"^/api/models/{_REPO}/paths-info/(?P<rev>[^/]+)$"),
    ("POST", "preupload", rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"),
    ("POST", "commit", rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"),
    ("POST", "lfs_batch", rf"^/{_REPO}\.git/info/lfs/objects/batch$"),
    ("PUT", "lfs_upload", r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$"),
    ("HEAD", "resolve", rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"),
    ("GET", "resolve", rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"),
]
_WRITES = {"create_repo", "create_branch", "preupload", "commit", "lfs_batch", "whoami"}  # lfs_upload: a presigned URL


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"
    lie = False  # this request's preupload answer lies (a Fault with `lie`)

    def log_message(self, *args):  # keep test output clean
        pass

    fault: Fault | None = None  # set for one request: its answer is replaced by the fault's status

    def _send(self, status: int, body: object = b"", headers: dict | None = None, head: bool = False) -> None:
        if self.fault is not None and self.fault.status and status < 400:
            status, body = self.fault.status, {"error": f"injected failure after the change: HTTP {self.fault.status}"}
            headers = {"Retry-After": str(self.fault.retry_after)} if self.fault.retry_after is not None else None
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        if not isinstance(body, bytes):
            self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        self._send(status, {"error": message}, {"X-Error-Code": code} if code else None)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        for verb, name, pattern in _ROUTES:  # noqa: B007 (the matching route's name is used after the loop)
            match = re.match(pattern, url.path) if verb == method else None
            if match:
                break
        else:
            self._body()
            return self._error(404, f"no route {method} {url.path}")
        groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
        hub = self.hub
        self.fault, self.lie = None, False  # a kept-alive connection serves many requests with one handler
        with hub.lock:
            hub.calls.append((name, groups.get("repo", "")))
            if hub.fail_next.get(name):
                hub.fail_next[name] -= 1
                self._body()
                return self._error(503, "injected failure: service unavailable")
            queued = hub.faults.get(name)
            fault = queued.pop(0) if queued else None
            hook = hub.before_next.pop(name, None)
            lag = hub.slow.get((name, groups.get("rev", "")), 0.0)
        if hook:
            hook()
        time.sleep(lag)  # a slow hub: served (a commit lands) even when the client is gone by then
        if fault is not None:
            time.sleep(fault.delay)
            if fault.drop_after is not None:  # the connection breaks mid-body: no answer at all
                self.rfile.read(min(fault.drop_after, int(self.headers.get("Content-Length") or 0)))
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault.status and not fault.applied:
                self._body()
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                return self._send(fault.status, {"error": f"injected failure: HTTP {fault.status}"}, headers)
            self.fault = fault if fault.applied else None
            self.lie = fault.lie
        if name in _WRITES and self.headers.get("Authorization") != f"Bearer {hub.token}":
            self._body()
            return self._error(401, "Invalid credentials in Authorization header")
        getattr(self, "r_" + name)(groups, parse_qs(url.query), method == "HEAD")

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_HEAD(self):
        self._dispatch("HEAD")

    # -- routes ----------------------------------------------------------------------
    def _files(self, g: dict) -> tuple[str, dict[str, Blob]] | None:
        found = self.hub.files(g["repo"], g["rev"])
        if found is None:
            code = "RepoNotFound" if g["repo"] not in self.hub.repos else "RevisionNotFound"
            self._error(404, f"{g['repo']}@{g['rev']} not found", code)
        return found

    def r_whoami(self, g, q, head):
        self._send(200, {"type": "user", "name": self.hub.user, "auth": {"accessToken": {"role": "write"}}})

    def r_validate_yaml(self, g, q, head):
        self._body()
        self._send(200, {"errors": [], "warnings": []})

    def r_create_repo(self, g, q, head):
        payload = json.loads(self._body())
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        with self.hub.lock:
            created = self.hub.create_repo(repo_id)
        if not created:  # the hub answers 409 with the url; huggingface_hub's exist_ok reads it
            return self._send(409, {"error": "You already created this model repo", "url": f"{self.hub.url}/{repo_id}"})
        self._send(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id})

    def r_repo_info(self, g, q, head):
        found = self._files(g)
        if found:
            commit, files = found
            self._send(
                200,
                {
                    "id": g["repo"],
                    "modelId": g["repo"],
                    "sha": commit,
                    "private": False,
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                },
            )

    def r_refs(self, g, q, head):
        repo = self.hub.repos.get(g["repo"])
        if repo is None:
            return self._error(404, "repo not found", "RepoNotFound")
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in sorted(repo.branches.items())]
        self._send(200, {"branches": branches, "tags": [], "converts": [], "pullRequests": []})

    def r_commits(self, g, q, head):
        found = self._files(g)
        if found:
            repo, chain, commit = self.hub.repos[g["repo"]], [], found[0]
            while commit is not None:
                chain.append(
                    {
                        "id": commit,
                        "authors": [{"user": self.hub.user}],
                        "date": "2026-01-01T00:00:00.000Z",
                        "title": repo.titles.get(commit, ""),
                        "message": "",
                    }
                )
                commit = repo.parents.get(commit)
            self._send(200, chain)

    def r_create_branch(self, g, q, head):
        payload = json.loads(self._body() or b"{}")
        repo = self.hub.repos.get(g["repo"])
        if repo is None:
            return self._error(404, "repo not found", "RepoNotFound")
        with self.hub.lock:
            if g["rev"] in repo.branches:
                return self._error(409, f"Reference refs/heads/{g['rev']} already exists")
            start = payload.get("startingPoint") or "main"
            repo.branches[g["rev"]] = repo.branches.get(start, start)
        self._send(200, {})

    def r_tree(self, g, q, head):
        found = self._files(g)
        if found:
            prefix = (g.get("path") or "").strip("/")
            entries = [_entry(p, b) for p, b in sorted(found[1].items()) if not prefix or p.startswith(prefix + "/")]
            self._send(200, entries)

    def r_paths_info(self, g, q, head):
        form = parse_qs(self._body().decode())
        found = self._files(g)
        if found:
            self._send(200, [_entry(p, found[1][p]) for p in form.get("paths", []) if p in found[1]])

    def r_preupload(self, g, q, head):
        payload = json.loads(self._body())
        found = self._files(g)
        if not found:
            return
        out = []
        for f in payload["files"]:
            lfs = f["path"].endswith(LFS_PATTERNS) or f["size"] > REGULAR_LIMIT
            remote = found[1].get(f["path"])
            oid = None if remote is None else (remote.sha256 if remote.lfs else remote.oid)
            ignore = self.lie and f["path"] != "README.md"
            out.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": ignore, "oid": oid}
            )
        self._send(200, {"files": out})

    def r_lfs_batch(self, g, q, head):
        payload = json.loads(self._body())
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if not (self.hub.blobs / obj["oid"]).exists():
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-upload/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def r_lfs_upload(self, g, q, head):
        data = self._body()
        if hashlib.sha256(data).hexdigest() != g["oid"]:
            return self._error(400, "sha256 mismatch")
        with self.hub.lock:
            self.hub.store(data, lfs=True)
        self._send(200, {})

    def r_commit(self, g, q, head):
        lines = [json.loads(line) for line in self._body().decode().splitlines() if line.strip()]
        with self.hub.lock:
            found = self.hub.files(g["repo"], g["rev"])
            if found is None:
                return self._error(404, f"{g['repo']}@{g['rev']} not found", "RevisionNotFound")
            parent, files = found
            header = lines[0]["value"]
            if header.get("parentCommit") and header["parentCommit"] != parent:  # the real hub's answer
                return self._error(412, "A commit has happened since. Please refresh and try again.")
            files = dict(files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                if key == "file":
                    data = base64.b64decode(value["content"])
                    if value["path"] in self.hub.tamper:
                        self.hub.tamper.discard(value["path"])
                        data = data.replace(b"bits", b"BITS", 1)  # same size, other bytes
                    files[value["path"]] = self.hub.store(data, lfs=False)
                elif key == "lfsFile":
                    if not (self.hub.blobs / value["oid"]).exists():
                        return self._error(400, f"LFS object {value['oid']} was not uploaded")
                    files[value["path"]] = Blob(
                        value["oid"], value["size"], git_oid(_pointer(value["oid"], value["size"])), True
                    )
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    files = {p: b for p, b in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            repo = self.hub.repos[g["repo"]]
            commit = repo.add(files, parent, header.get("summary", ""))
            repo.branches[g["rev"]] = commit
        self._send(
            200,
            {"commitUrl": f"{self.hub.url}/{g['repo']}/commit/{commit}", "commitOid": commit, "pullRequestUrl": None},
        )

    def r_resolve(self, g, q, head):
        found = self._files(g)
        if not found:
            return
        commit, files = found
        blob = files.get(g["path"])
        if blob is None:
            return self._error(404, f"{g['path']} not found", "EntryNotFound")
        headers = {"X-Repo-Commit": commit, "ETag": f'"{blob.oid}"'}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        self._send(200, self.hub.read(blob), headers, head=head)


@contextlib.contextmanager
def serve(root: Path, token: str):
    """Run a LocalHub on a free 127.0.0.1 port for the duration of the block."""
    hub = LocalHub(root, token)
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # type: ignore[method-assign]  # killed clients reset
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        shutil.rmtree(hub.blobs, ignore_errors=True)
