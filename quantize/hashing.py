"""Content hashes that name cache entries and recognise finished stages.

File digests are memoised by (path, size, mtime) so a 14 GB checkpoint is read once,
not on every run. A memo can be fooled (bytes changed, size and mtime restored), so
`publish` reads the bytes again (`memo=False`): the memo only speeds up builds and checks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .paths import cache_dir, write_atomic

_CHUNK = 1 << 22


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(value: Any) -> str:
    """Hash of a JSON-able value, independent of key order."""
    return sha256_bytes(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode())


def _memo_path() -> Path:
    return cache_dir() / "file-digests.json"


def file_sha256(path: Path, memo: bool = True) -> str:
    """sha256 of the file's bytes; with `memo`, remembered by (path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_file = _memo_path()
    try:
        known = json.loads(memo_file.read_text()) if memo else {}
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    if memo:
        known[key] = digest.hexdigest()
        write_atomic(memo_file, json.dumps(known, indent=0).encode())
    return digest.hexdigest()


def tree_sha256(folder: Path, names: list[str] | None = None) -> str:
    """Hash of a folder's files (relative names and contents), optionally only `names` that exist."""
    folder = Path(folder)
    files = (
        sorted(p for p in folder.rglob("*") if p.is_file())
        if names is None
        else [folder / n for n in sorted(names) if (folder / n).is_file()]
    )
    entries = {str(p.relative_to(folder)): file_sha256(p) for p in files if not p.name.startswith(".")}
    return sha256_json(entries)


def short(digest: str) -> str:
    return digest[:16]
