"""The unquantized model, run one decoder layer at a time from its safetensors shards.

Why: a 7B model in float32 is 29 GB, more than a 24 GB GPU or a 32 GB machine can give,
and half precision shifts the importance matrix and the base perplexity that every variant
is measured against. Streaming keeps float32 on a CPU (and the checkpoint's half precision
on a GPU) while holding one layer's weights plus the batch's activations, as GPTQ engines
do: every sample goes through layer i before layer i+1 is read. The skeleton is built on
the meta device, so no full-size model is ever allocated.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .devices import compute_device
from .progress import bar

log = logging.getLogger(__name__)

# hook(name of the Linear module as in the HF checkpoint, its input [tokens, in_features])
InputHook = Callable[[str, "object"], None]

# Tokens whose activations one pass through the layers holds: a GPTQ-style recipe (128 x 4096 tokens) would
# otherwise keep 8.6 GB of float32 hidden states at 7B, twice over with the final ones, beside the MLP's
# intermediates. Larger sets go through the layers in chunks, each re-reading the (page-cached) shards.
CHUNK_TOKENS = 16384


def chunk_rows(rows: int, seq_len: int) -> int:
    """Rows of `seq_len` tokens per pass through the layers (at least one)."""
    return max(1, min(rows, CHUNK_TOKENS // max(1, seq_len)))


def default_device() -> tuple[str, object]:
    """CUDA in the checkpoint's half precision when present; else the CPU in float32 (exact, and bf16-free)."""
    import torch

    device = compute_device()
    if device != "cpu":
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


class LayerStream:
    """A decoder-only HF checkpoint (embed_tokens, layers, norm, lm_head), materialised a piece at a time."""

    def __init__(self, model_dir: Path, device: str | None = None, dtype=None):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        self.model_dir = Path(model_dir)
        fallback_device, fallback_dtype = default_device()
        self.device, self.dtype = device or fallback_device, dtype or fallback_dtype
        self.config = AutoConfig.from_pretrained(self.model_dir)
        self.config._attn_implementation = "sdpa"
        with torch.device("meta"):
            self.skeleton = AutoModelForCausalLM.from_config(self.config)
        self.skeleton.eval()
        self._where = self._index()

    def _index(self) -> dict[str, Path]:
        """Tensor name -> the shard that holds it."""
        index = self.model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {name: self.model_dir / shard for name, shard in weight_map.items()}
        from safetensors import safe_open

        single = self.model_dir / "model.safetensors"
        with safe_open(single, framework="pt") as handle:
            return {name: single for name in handle.keys()}

    def _tensors(self, prefix: str) -> dict:
        """Every tensor under `prefix`, read from its shard (opened only for this read: pages are not kept mapped)."""
        from safetensors import safe_open

        by_shard: dict[Path, list[str]] = {}
        for name, shard in self._where.items():
            if name.startswith(prefix):
                by_shard.setdefault(shard, []).append(name)
        out = {}
        for shard, names in by_shard.items():
            with safe_open(shard, framework="pt") as handle:
                for name in names:
                    out[name.removeprefix(prefix)] = handle.get_tensor(name).to(self.device, self.dtype)
        return out

    def _materialise(self, module, prefix: str):
        state = self._tensors(prefix)
        missing = set(module.state_dict()) - set(state)
        if missing:
            raise KeyError(f"{self.model_dir}: no tensors {sorted(missing)[:3]} under {prefix!r}")
        module.load_state_dict(state, assign=True, strict=True)
        return module

    def head_weight(self):
        """lm_head's weight, or the embedding's when they are tied."""
        name = "lm_head.weight" if "lm_head.weight" in self._where else "model.embed_tokens.weight"
        return self._tensors(name)[""]

    def final_hidden(self, ids: np.ndarray, hook: InputHook | None = None, desc: str = "layers"):
        """Final normed hidden states [n, T, hidden] of the rows of `ids` [n, T]; `hook` sees every Linear input."""
        import torch
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        inner = self.skeleton.model
        tokens = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device)
        embed = self._tensors("model.embed_tokens.")["weight"]
        hidden = [embed[row].unsqueeze(0) for row in tokens]
        del embed
        positions = torch.arange(tokens.shape[1], device=self.device).unsqueeze(0)
        with torch.device(self.device):  # the skeleton's copy lives on the meta device: build a real one
            rotary = type(inner.rotary_emb)(config=self.config)
        with torch.no_grad():
            cos_sin = rotary(hidden[0], position_ids=positions)
            # the mask the model itself would build (None under sdpa: is_causal)
            make_mask = (
                create_sliding_window_causal_mask
                if getattr(self.config, "sliding_window", None)
                else create_causal_mask
            )
            mask = make_mask(
                config=self.config,
                inputs_embeds=hidden[0],
                attention_mask=None,
                past_key_values=None,
                position_ids=positions,
            )
            for index in bar(range(self.config.num_hidden_layers), desc=desc, unit="layer"):
                layer = self._materialise(inner.layers[index], f"model.layers.{index}.")
                handles = []
                if hook is not None:
                    for name, module in layer.named_modules():
                        if isinstance(module, torch.nn.Linear):
                            full = f"model.layers.{index}.{name}"
                            handles.append(
                                module.register_forward_pre_hook(
                                    lambda _m, args, full=full: hook(full, args[0].reshape(-1, args[0].shape[-1]))
                                )
                            )
                try:
                    for i, h in enumerate(hidden):
                        out = layer(h, attention_mask=mask, position_ids=positions, position_embeddings=cos_sin)
                        hidden[i] = out[0] if isinstance(out, tuple) else out
                finally:
                    for handle in handles:
                        handle.remove()
                    layer.to("meta")  # drop this layer's weights before the next is read
            norm = self._materialise(inner.norm, "model.norm.")
            final = torch.cat([norm(h) for h in hidden])
            norm.to("meta")
        return final

    def logits_fn(self, windows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """A LogitsFn over exactly these windows: all layers run once up front, lm_head per window on request."""
        import torch

        final = self.final_hidden(windows, desc="base layers")
        head = self.head_weight()
        rows = {np.asarray(w).tobytes(): i for i, w in enumerate(windows)}

        def logits(window: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return (final[rows[np.asarray(window).tobytes()]] @ head.T).float().cpu().numpy()

        return logits
