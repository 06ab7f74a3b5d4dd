"""Where things live, and how they get there without ever being half-written."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import DiskFullError


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


def cache_dir() -> Path:
    """`QUANTIZE_CACHE`, else ~/.cache/quantize: base checkpoints, calibration tokens, wheels."""
    root = Path(os.environ.get("QUANTIZE_CACHE") or Path.home() / ".cache" / "quantize")
    root.mkdir(parents=True, exist_ok=True)
    return root


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a sibling temporary file, then rename: readers see the old or the new file, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise_if_disk_full(err, path)
        raise


def raise_if_disk_full(err: OSError, path: Path) -> None:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(Path(path).parent if not Path(path).is_dir() else path).free
        raise DiskFullError(
            f"{path}: disk full while writing ({free / 1e9:.2f} GB free); free space or pass --out on another disk"
        ) from None


def require_free_space(folder: Path, needed: int, what: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFullError(
            f"{folder}: {what} needs about {needed / 1e9:.2f} GB but only {free / 1e9:.2f} GB is free; "
            "free space or pass --out on another disk"
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
        if isinstance(err, OSError):
            raise_if_disk_full(err, final)
        raise
    normalize_modes(tmp)
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def clean_stale_partials(final: Path) -> list[Path]:
    removed = []
    for leftover in final.parent.glob(f".{final.name}.partial-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
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
