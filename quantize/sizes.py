"""The base model's tensors from config.json alone: what every format's size prediction sums over.

Each format predicts its file from these shapes and its own layout (formats/*: packed
ints, zeros, fp16 scales; GGUF per-tensor types from llama.cpp's dry run).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from . import shapes


@dataclass(frozen=True)
class Tensor:
    name: str  # HF name
    shape: tuple[int, ...]  # torch order: [out, in] for linears

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_linear(self) -> bool:
        return ".layers." in self.name and self.name.endswith("proj.weight")


def model_tensors(config: dict) -> list[Tensor]:
    """Every tensor of a Llama/Mistral checkpoint, from its hyperparameters."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = shapes.head_dim(config)
    out = [Tensor("model.embed_tokens.weight", (vocab, hidden)), Tensor("model.norm.weight", (hidden,))]
    if not config.get("tie_word_embeddings"):
        out.append(Tensor("lm_head.weight", (vocab, hidden)))
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        out += [
            Tensor(f"{p}.input_layernorm.weight", (hidden,)),
            Tensor(f"{p}.post_attention_layernorm.weight", (hidden,)),
            Tensor(f"{p}.self_attn.q_proj.weight", (heads * head_dim, hidden)),
            Tensor(f"{p}.self_attn.k_proj.weight", (kv * head_dim, hidden)),
            Tensor(f"{p}.self_attn.v_proj.weight", (kv * head_dim, hidden)),
            Tensor(f"{p}.self_attn.o_proj.weight", (hidden, heads * head_dim)),
            Tensor(f"{p}.mlp.gate_proj.weight", (inter, hidden)),
            Tensor(f"{p}.mlp.up_proj.weight", (inter, hidden)),
            Tensor(f"{p}.mlp.down_proj.weight", (hidden, inter)),
        ]
    return out


def param_count(config: dict) -> int:
    return sum(t.numel for t in model_tensors(config))


def safetensors_bytes(entries: list[tuple[str, str, tuple[int, ...], int]]) -> int:
    """Data plus the JSON header safetensors writes: (name, dtype, shape, nbytes) per tensor."""
    header: dict[str, dict[str, Any]] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, nbytes in sorted(entries):
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"))
    return 8 + len(text) + (-len(text) % 8) + offset
