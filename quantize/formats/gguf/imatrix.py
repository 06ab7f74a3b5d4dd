"""llama.cpp's importance matrix, computed from the HF model on the cached calibration tokens.

For every matrix llama.cpp quantizes, the per-input-column mean of squared activations
over the calibration tokens: what `llama-imatrix` measures, taken here with forward
hooks on the HF model so no ggml graph has to be mirrored. Columns are inputs, so the
Q/K row permutation of the converter does not touch them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gguf
import numpy as np

from ...streaming import LayerStream, chunk_rows

log = logging.getLogger(__name__)


def compute_imatrix(model_dir: Path, input_ids: np.ndarray) -> dict[str, np.ndarray]:
    """{GGUF tensor name: mean x^2 per input column}, for every Linear of the model.

    The model runs layer by layer (`streaming.LayerStream`): float32 on a CPU without ever
    holding more than one layer, half precision on a GPU; sums are kept in float64. Large
    calibration sets go through the layers in chunks of `streaming.CHUNK_TOKENS` tokens.
    """
    import torch

    stream = LayerStream(model_dir)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, stream.config.num_hidden_layers)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def add(hf_name: str, x) -> None:
        gguf_name = names.get_name(f"{hf_name}.weight", try_suffixes=(".weight",))
        if gguf_name is None:
            return
        x = x.detach().to(torch.float64)
        sums[gguf_name] = sums.get(gguf_name, 0) + (x * x).sum(dim=0).cpu()
        counts[gguf_name] = counts.get(gguf_name, 0) + x.shape[0]

    rows, seq_len = input_ids.shape
    step = chunk_rows(rows, seq_len)
    for start in range(0, rows, step):
        part = f" {start // step + 1}/{-(-rows // step)}" if step < rows else ""
        final = stream.final_hidden(input_ids[start : start + step], hook=add, desc=f"imatrix{part}")
        if not getattr(stream.config, "tie_word_embeddings", False):  # a tied output is the embedding: no imatrix
            add("lm_head", final.reshape(-1, final.shape[-1]))
        del final
    return {name: (sums[name] / counts[name]).to(torch.float32).numpy() for name in sums}


def save_imatrix(path: Path, matrix: dict[str, np.ndarray]) -> None:
    # numpy's stub types **kwds against its keyword `allow_pickle: bool` too; the values are arrays
    np.savez(path, **matrix)  # type: ignore[arg-type]


def load_imatrix(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
