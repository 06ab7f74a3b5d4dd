"""Where model work runs: the first CUDA device when there is one, else the CPU.

One rule for every stage and for `plan`: torch's own answer, asked once per process, so a
plan cannot predict GPU memory for a build that then runs on the CPU (a GPU machine with a
CPU-only torch) or the reverse. Asked only when a prediction or a stage needs it, so
importing the planner costs no torch.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

from .records import Machine

# The /proc/cpuinfo flags that pick kernels: torch's and llama.cpp's CPU paths, and vLLM's CPU libraries.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "neon", "asimd")


@functools.cache
def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def compute_device() -> str:
    return "cuda:0" if has_cuda() else "cpu"


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), as torch's own probes say.

    Without it torch emulates bfloat16 matmuls at about 5x float32's time (23 ms against 4.4 ms on an
    AVX-512 CPU without AVX512-BF16): a stage that may choose its dtype asks this first."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def this_machine() -> Machine:
    """The machine a build runs on, as its report and manifest record it (nothing that names a host or user)."""
    import torch

    cpu, flags = platform.machine(), set[str]()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == platform.machine():
                cpu = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return Machine(cpu=cpu, isa=[f for f in KERNEL_FLAGS if f in flags], cores=cores, threads=torch.get_num_threads())
