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

from .progress import bar

log = logging.getLogger(__name__)


def compute_imatrix(model_dir: Path, input_ids: np.ndarray) -> dict[str, np.ndarray]:
    """{GGUF tensor name: mean x^2 per input column}, for every Linear of the model."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook_for(gguf_name: str):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            sums[gguf_name] = sums.get(gguf_name, 0) + (x * x).sum(dim=0)
            counts[gguf_name] = counts.get(gguf_name, 0) + x.shape[0]
        return hook

    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or (tied and module_name == "lm_head"):
            continue
        gguf_name = names.get_name(f"{module_name}.weight", try_suffixes=(".weight",))
        if gguf_name is not None:
            hooks.append(module.register_forward_pre_hook(hook_for(gguf_name)))
    try:
        with torch.no_grad():
            for row in bar(input_ids, desc="imatrix", unit="sample"):
                model(torch.from_numpy(row).unsqueeze(0))
    finally:
        for h in hooks:
            h.remove()
    return {name: (sums[name] / counts[name]).to(torch.float32).numpy() for name in sums}


def save_imatrix(path: Path, matrix: dict[str, np.ndarray]) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **matrix)
    tmp.replace(path)


def load_imatrix(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
