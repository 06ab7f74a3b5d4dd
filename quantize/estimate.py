"""What a variant's stages will cost, from the base model's config.json alone: the terms formats predict with.

Kept below `formats/` (which call it from `predict_bytes` and `stage_needs`) and apart from
`plan` (which asks the formats and presents their answers), so the arrows run one way: plan
-> formats -> estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import shapes
from .calibration import load_recipe
from .config import Project
from .devices import cpu_has_bf16, has_cuda
from .evalset import find_eval, load_eval
from .sizes import model_tensors, param_count

# RSS of a Python process with torch, transformers and gptqmodel imported (bench/memory.py: 0.84 GB),
# added to every stage's RAM: what the machine must have besides the stage's own buffers.
PROCESS_RSS = int(0.9e9)
# The base model's smoke replies (checks/chat.py): prompts per batched generation, and the tokens of one
# conversation the prediction allows for (a 24-prompt suite's prompts are under 100 tokens, replies 96).
REPLY_BATCH = 8
REPLY_CONTEXT = 512
# The memory rule: a stage may hold at most this multiple of the fp16 model in RAM or VRAM (the mission's
# 7B on one 24 GB machine: 18.8 GB).
MEMORY_RULE = 1.3
# What float32 may add over bfloat16 on a CPU that emulates bfloat16, for the speed (2.2x on SmolLM2's
# GPTQ), when it stays outside the memory rule: small models, whose fixed costs exceed 1.3x fp16 anyway.
FLOAT32_SLACK = 1 << 30


@dataclass(frozen=True)
class Needs:
    """One stage's predicted peak: RAM, VRAM (when on a GPU) and disk it writes (out/ or the cache)."""

    ram: int = 0
    vram: int = 0
    disk_out: int = 0
    disk_cache: int = 0


def kv_cache_bytes(config: dict, seq_len: int) -> int:
    heads = config["num_attention_heads"]
    head_dim = shapes.head_dim(config)
    kv = config.get("num_key_value_heads") or heads
    return 2 * config["num_hidden_layers"] * kv * head_dim * seq_len * 2  # K and V, fp16


def workspace_bytes(config: dict, seq_len: int) -> int:
    """One forward at batch 1: fp32 logits plus one layer's fp16 activations (attention and MLP)."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    return seq_len * config["vocab_size"] * 4 + seq_len * (4 * hidden + 3 * inter) * 2


class Estimator:
    """The shared terms of every format's prediction for one project: parameters, layers, streams, checks."""

    def __init__(
        self,
        project: Project,
        config: dict,
        model_dir: Path | None = None,
        gpu: bool | None = None,
        bf16: bool | None = None,
    ):
        self.project, self.config, self.model_dir = project, config, model_dir
        self.params = param_count(config)
        self.fp16_bytes = 2 * self.params
        self.gpu = has_cuda() if gpu is None else gpu  # devices' one rule, unless a test pins the machine
        self._bf16 = bf16  # the CPU's bfloat16 (devices.cpu_has_bf16, asked when needed), unless a test pins it
        self.cache: dict = {}  # per-format shared work (GGUF: one skeleton dry run for every type)

    def layer_bytes(self, bytes_per_param: int) -> int:
        """One decoder layer's weights at this precision (the streaming stages hold one at a time)."""
        per_layer = [t.numel for t in model_tensors(self.config) if ".layers.0." in t.name]
        return bytes_per_param * sum(per_layer)

    def stream_needs(self, rows: int, seq_len: int) -> Needs:
        """The unquantized model streamed layer by layer (streaming.py) over `rows` x `seq_len` tokens:
        one layer (as read, 16-bit, and as computed), the batch's hidden states in and out and the MLP's
        intermediate activations, the embedding and the head, and one window's logits. At 7B on a CPU this
        predicts 4.1 GB for 8 x 512 tokens where 4.5 GB was measured (bench/full7b.py)."""
        hidden, vocab = self.config["hidden_size"], self.config["vocab_size"]
        width = 2 if self.gpu else 4  # half precision on a GPU, float32 on a CPU
        states = 2 * rows * seq_len * hidden * width + 3 * rows * seq_len * self.config["intermediate_size"] * width
        head = 2 * vocab * hidden * width + seq_len * vocab * 4
        layer = self.layer_bytes(width) + (self.layer_bytes(2) if width != 2 else 0)
        if self.gpu:
            return Needs(ram=head, vram=layer + states)
        return Needs(ram=layer + states + head)

    def cpu_dtype(self, bf16_ram: int, fp32_ram: int) -> str:
        """The dtype a CPU stage that can run in either computes in, from its two predicted peaks.

        bfloat16 where the CPU has it in hardware; elsewhere torch emulates it at about 5x float32's time
        (gptqmodel's GPTQ on SmolLM2: 647 s in bfloat16, 294 s in float32, same KLD within noise), so float32
        unless that breaks the memory rule by more than FLOAT32_SLACK. The plan asks this too, so its
        prediction is the build's."""
        if cpu_has_bf16() if self._bf16 is None else self._bf16:
            return "bfloat16"
        if fp32_ram <= MEMORY_RULE * self.fp16_bytes or fp32_ram - bf16_ram <= FLOAT32_SLACK:
            return "float32"
        return "bfloat16"

    def check_needs(self, file_bytes: int) -> Needs:
        """The check: the base reference streamed over the eval windows, the base's smoke replies, then the
        variant loaded and scored. The replies load the base whole in its 16-bit dtype (1.0x fp16) with the
        KV cache of one batch; they are cached after the first check, which this prediction cannot know, so
        it always counts them: a machine that cannot hold them must not start the first check."""
        recipe = load_eval(find_eval(self.project.root, self.project.config.evaluation))
        base = self.stream_needs(recipe.max_windows, recipe.n_ctx)
        tokens = REPLY_BATCH * REPLY_CONTEXT
        replies = self.fp16_bytes + kv_cache_bytes(self.config, tokens) + workspace_bytes(self.config, tokens)
        variant = file_bytes + kv_cache_bytes(self.config, recipe.n_ctx) + workspace_bytes(self.config, recipe.n_ctx)
        if self.gpu:
            return Needs(ram=base.ram, vram=max(base.vram, replies, variant))
        return Needs(ram=max(base.ram, replies, variant))

    def recipe(self, name: str):
        return load_recipe(self.project.recipe_path(name)).recipe
