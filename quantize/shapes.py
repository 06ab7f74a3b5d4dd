"""Layer widths from config.json alone, to refuse impossible group sizes before any work.

gptqmodel only notices a group size that does not divide a layer deep inside the first
layer (AWQ), or writes a checkpoint its fast kernels then refuse to load (GPTQ), so
the check belongs at validation time, with the sizes that would work.
"""

from __future__ import annotations

from .errors import ConfigError

CANDIDATE_GROUPS = (32, 64, 128, 256)


def head_dim(config: dict) -> int:
    """Per-head width: `head_dim` when config.json gives it (Mistral does), else hidden / heads."""
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def linear_input_widths(config: dict) -> dict[str, int]:
    """Input width of every quantized linear kind of a Llama/Mistral-style decoder layer."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    return {
        "self_attn.q_proj/k_proj/v_proj": hidden,
        "self_attn.o_proj": heads * head_dim(config),
        "mlp.gate_proj/up_proj": hidden,
        "mlp.down_proj": config["intermediate_size"],
    }


def working_group_sizes(config: dict) -> list[int]:
    widths = linear_input_widths(config).values()
    return [g for g in CANDIDATE_GROUPS if all(w % g == 0 for w in widths)] + [-1]


def check_group_size(config: dict, group_size: int, file: str, variant: str) -> None:
    if group_size == -1:
        return
    for layer, width in linear_input_widths(config).items():
        if width % group_size:
            sizes = ", ".join(str(g) for g in working_group_sizes(config))
            raise ConfigError(
                file,
                f"variant {variant}: group_size",
                f"{group_size} does not divide the input width {width} of {layer}",
                f"use one of: {sizes}",
            )


CPU_INT4_GROUPS = (32, 64, 128, 256)


def needs_slow_cpu_kernel(config: dict, bits: int, group_size: int) -> bool:
    """True when gptqmodel's fast CPU int4 kernel cannot run this GPTQ layout.

    torch's int4 CPU matmul takes group sizes 32-256 only, so 4-bit without grouping
    (one group as wide as the layer) must be loaded with the plain torch backend on a CPU.
    """
    if bits != 4:
        return False
    widths = set(linear_input_widths(config).values())
    effective = widths if group_size == -1 else {group_size}
    return not effective <= set(CPU_INT4_GROUPS)
