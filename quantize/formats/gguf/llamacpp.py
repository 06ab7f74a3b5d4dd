"""Loading a GGUF in llama.cpp (llama-cpp-python) and reading its logits for given token ids.

Comparisons across formats feed token ids, never text: llama.cpp's and HF's tokenizers
of the same model can differ on rare inputs, and a comparison must not measure that.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def load_gguf(path: Path, n_ctx: int = 512):
    """A llama_cpp.Llama that keeps logits for every position, quiet, on all cores."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # 2-8x faster on a shared 2-core machine
    from llama_cpp import Llama

    return Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        logits_all=True,
        verbose=False,
        n_threads=os.cpu_count() or 1,
        n_gpu_layers=0,
    )


def gguf_logits(llm, ids: np.ndarray) -> np.ndarray:
    """Logits [len(ids), vocab] of a fresh evaluation of `ids`."""
    llm.reset()
    llm.eval([int(i) for i in ids])
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def gguf_greedy(llm, ids: list[int], max_new_tokens: int, stop: int | None = None) -> list[int]:
    llm.reset()
    out = []
    for token in llm.generate([int(i) for i in ids], temp=0.0, top_k=1, reset=True):
        out.append(int(token))
        if len(out) >= max_new_tokens or token == stop:
            break
    return out


class GGUFScorer:
    """A GGUF loaded in llama.cpp, scored on the same token ids as every other format."""

    model = None  # no torch module: memory is the process's RSS

    def __init__(self, path: Path, n_ctx: int):
        self.llm = load_gguf(path, n_ctx=n_ctx)

    def logits(self, window):
        return gguf_logits(self.llm, window)

    def greedy(self, ids: list[int], max_new_tokens: int, stop: int | None, pad: int | None = None) -> list[int]:
        return gguf_greedy(self.llm, ids, max_new_tokens, stop=stop)
