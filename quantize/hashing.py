"""Content hashes that name cache entries and recognise finished stages.

File digests are memoised by (path, size, mtime) so a 14 GB checkpoint is read once,
not on every run; the digest itself is always of the bytes.
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


def file_sha256(path: Path) -> str:
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_file = _memo_path()
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    memo[key] = digest.hexdigest()
    write_atomic(memo_file, json.dumps(memo, indent=0).encode())
    return memo[key]


def tree_sha256(folder: Path, names: list[str] | None = None) -> str:
    """Hash of a folder's files (relative names and contents), optionally only `names` that exist."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if names is None else [
        folder / n for n in sorted(names) if (folder / n).is_file()
    ]
    entries = {str(p.relative_to(folder)): file_sha256(p) for p in files if not p.name.startswith(".")}
    return sha256_json(entries)


def short(digest: str) -> str:
    return digest[:16]
