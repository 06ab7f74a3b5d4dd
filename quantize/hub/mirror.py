"""`serve`: a read-only local hub over a folder of published git repositories, through olah.

The git transport publishes into `MIRROR/models/OWNER/NAME`; olah (PyPI) answers
huggingface_hub's read endpoints (revision info, refs, tree, resolve by branch or commit)
from those repositories, so `HF_ENDPOINT=http://127.0.0.1:PORT hf download REPO --revision
BRANCH` fetches what was published, with no network and no account.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import QuantizeError

log = logging.getLogger(__name__)


def olah_config(mirror: Path, host: str, port: int, state: Path) -> str:
    """olah's TOML: serve only the mirror folder, never reach huggingface.co."""
    return "\n".join(
        [
            "[basic]",
            f'host = "{host}"',
            f"port = {port}",
            f'repos-path = "{state / "repos"}"',
            f'mirrors-path = ["{Path(mirror).resolve()}"]',
            'mirror-scheme = "http"',
            f'mirror-netloc = "{host}:{port}"',
            f'mirror-lfs-netloc = "{host}:{port}"',
            "",
            "[accessibility]",
            "offline = true",
            "",
        ]
    )


def _olah_command(config: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import sys; from olah.server import cli; sys.argv[0] = 'olah-cli'; cli()",
        "--config",
        str(config),
    ]


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the process that started it ends, however it ends."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise QuantizeError(f"olah exited with code {proc.returncode} before serving on {host}:{port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.2)
    raise QuantizeError(f"olah did not start serving on {host}:{port} within {timeout:.0f} s")


@contextlib.contextmanager
def running(mirror: Path, host: str = "127.0.0.1", port: int | None = None, timeout: float = 60.0):
    """Serve `mirror` for the duration of the block; yields the endpoint URL. Stops and frees the port on exit."""
    port = port or free_port(host)
    with tempfile.TemporaryDirectory(prefix="quantize-olah-") as tmp:
        state = Path(tmp)
        config = state / "olah.toml"
        config.write_text(olah_config(mirror, host, port, state))
        log_file = open(state / "olah.log", "wb")
        proc = subprocess.Popen(
            _olah_command(config), cwd=state, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        try:
            _wait_ready(proc, host, port, timeout)
            yield f"http://{host}:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log_file.close()


def serve_forever(mirror: Path, host: str, port: int) -> int:
    if not Path(mirror, "models").is_dir():
        raise QuantizeError(
            f"{mirror}: no models/ folder; publish into it first with `python -m quantize publish --git {mirror} ...`"
        )
    with running(mirror, host, port) as url:
        repos = sorted(str(p.relative_to(Path(mirror, "models"))) for p in Path(mirror, "models").glob("*/*"))
        print(f"serving {len(repos)} repo(s) from {mirror} at {url} (Ctrl-C stops)")
        for repo in repos:
            print(f"  HF_ENDPOINT={url} hf download {repo} --revision BRANCH")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0
