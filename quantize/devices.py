"""Where model work runs: the first CUDA device when there is one, else the CPU.

One rule for every stage and for `plan`: torch's own answer, asked once per process, so a
plan cannot predict GPU memory for a build that then runs on the CPU (a GPU machine with a
CPU-only torch) or the reverse. Asked only when a prediction or a stage needs it, so
importing the planner costs no torch.
"""

from __future__ import annotations

import functools


@functools.cache
def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def compute_device() -> str:
    return "cuda:0" if has_cuda() else "cpu"
