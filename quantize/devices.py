"""Where model work runs: the first CUDA device when there is one, else the CPU (one rule for every stage)."""

from __future__ import annotations


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def compute_device() -> str:
    return "cuda:0" if has_cuda() else "cpu"
