"""Where things live, and how they get there without ever being half-written."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import DiskFullError

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Outputs get the modes `save_pretrained` and llama.cpp give theirs (0644 files, 0755 folders under
# the usual umask), not the 0600 of temporary files: other users and web servers read published files.
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


def normalize_modes(root: Path) -> None:
    """Give every file under `root` FILE_MODE and every folder DIR_MODE (root included)."""
    root = Path(root)
    if root.is_file():
        os.chmod(root, FILE_MODE)
        return
    os.chmod(root, DIR_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), DIR_MODE)
        for name in files:
            os.chmod(os.path.join(folder, name), FILE_MODE)


def cache_root() -> Path:
    """`QUANTIZE_CACHE`, else ~/.cache/quantize (the one rule; not created here)."""
    return Path(os.environ.get("QUANTIZE_CACHE") or Path.home() / ".cache" / "quantize")


def cache_dir() -> Path:
    """The cache root, created: base checkpoints, calibration tokens, references, GGUF intermediates."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temporary name beside `path`, unique to this writer, moved onto `path` when the block succeeds.

    Readers see the old file or the whole new one, never a part, and two writers never share
    a temporary file. The temporary name keeps `path`'s suffix, so numpy and llama.cpp add none.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.partial{path.suffix}"
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as err:
        raise_if_disk_full(err, path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through `atomic_target`."""
    with atomic_target(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an advisory lock named after `path` (`.NAME.lock` beside it) for the block.

    Shards sharing one cache compute each expensive entry once: the first takes the lock,
    the others wait here and then find the finished entry.
    """
    lock = Path(path).parent / f".{Path(path).name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish %s", Path(path).name)
            start = time.monotonic()
            fcntl.flock(handle, fcntl.LOCK_EX)
            log.info("%s: lock released after %.0f s", Path(path).name, time.monotonic() - start)
        yield


def compute_once(path: Path, make: Callable[[Path], None]) -> bool:
    """Create the shared file `path` with `make(tmp)` unless it exists; True if this process made it."""
    path = Path(path)
    if path.is_file():
        return False
    with exclusive(path):
        if path.is_file():
            return False
        with atomic_target(path) as tmp:
            make(tmp)
    return True


def is_disk_full(err: BaseException | None) -> bool:
    """ENOSPC/EDQUOT anywhere in the exception chain (engines wrap OSError in their own errors)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "os error 28" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds `path` (its nearest existing ancestor)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def raise_if_disk_full(err: BaseException, path: Path) -> None:
    """Turn ENOSPC into one DiskFullError about `path` (or the file the OS named); keep one raised deeper."""
    if isinstance(err, DiskFullError):
        return
    if is_disk_full(err):
        path = getattr(err, "filename", None) or path
        raise DiskFullError(
            f"{path}: disk full while writing ({free_bytes(path) / 1e9:.2f} GB free on that disk)",
            fix="free space on that disk, or move it elsewhere (--out for outputs, QUANTIZE_CACHE for the cache)",
        ) from None


def require_free_space(folder: Path, needed: int, what: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFullError(
            f"{folder}: {what} needs about {needed / 1e9:.2f} GB but only {free / 1e9:.2f} GB is free on that disk",
            fix="free space there, or pass --out (outputs) or QUANTIZE_CACHE (cache) on another disk",
        )


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; on success swap it into place, on any error remove it.

    The temporary name carries the pid so a later run can tell a crashed build's leftovers
    (pid gone) from a concurrent one, and remove them.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(final)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_if_disk_full(err, final)
        raise
    normalize_modes(tmp)
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def clean_stale_partials(final: Path) -> list[Path]:
    """Remove what a crashed run left beside `final` (a live pid's are left alone): `.NAME.partial-PID`
    (unfinished) and `.NAME.old-PID` (the previous output, when the swap or its removal was cut short).
    An old one is put back when `final` is missing: a crash between the two renames left it the last complete output."""
    removed = []
    for leftover in [*final.parent.glob(f".{final.name}.partial-*"), *final.parent.glob(f".{final.name}.old-*")]:
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        if ".old-" in leftover.name and not final.exists():
            os.replace(leftover, final)
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json(path: Path, value: Any) -> None:
    """A JSON file written atomically (every report and published config): readers never see half of one."""
    write_atomic(Path(path), (json.dumps(value, indent=2) + "\n").encode())
