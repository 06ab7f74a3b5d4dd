"""Variant names users already download by (DESIGN.md section 3).

Short names are what people type (`gptq-4bit-32g`); branch names are what the hub
holds (`gptq-4bit-32g-actorder_True`), following the convention TheBloke's repos made
familiar, so that `hf download REPO --revision BRANCH` commands carry over unchanged.
"""

from __future__ import annotations

import re

import gguf

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def is_safe_name(name: str) -> bool:
    """True for a name that can be a file name or path part as it is: no separator, no `..`, no leading dot or dash."""
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None and ".." not in name


def gptq_short_name(bits: int, group_size: int, desc_act: bool) -> str:
    name = f"gptq-{bits}bit" + ("" if group_size == -1 else f"-{group_size}g")
    return name if desc_act else f"{name}-noact"


def gptq_branch(bits: int, group_size: int, desc_act: bool) -> str:
    return f"gptq-{bits}bit-{group_size}g-actorder_{desc_act}"


def awq_short_name(bits: int, group_size: int) -> str:
    return f"awq-{bits}bit-{group_size}g"


def gguf_short_name(quant_type: str, imatrix: bool = False) -> str:
    """`gguf-q4_k_m`; with an importance matrix `gguf-i1-q4_k_m`, after the `i1-` files users know."""
    return f"gguf-{'i1-' if imatrix else ''}{quant_type.lower()}"


def gguf_file_name(model_name: str, quant_type: str, imatrix: bool = False) -> str:
    """`NAME.Q4_K_M.gguf`; the config refuses unsafe names, and this refuses them again before they reach a path."""
    if not is_safe_name(model_name):
        raise ValueError(f"unsafe model name {model_name!r} for a GGUF file name")
    return f"{model_name}.{'i1-' if imatrix else ''}{quant_type.upper()}.gguf"


def gguf_quant_types() -> list[str]:
    """Every file type llama.cpp writes for a dense model, named as on its command line (`Q4_K_M`).

    Ternary (TQ*), MoE-only and hardware-specific types are left out: they need models
    trained for them.
    """
    skip = {"GUESSED", "MOSTLY_TQ1_0", "MOSTLY_TQ2_0", "MOSTLY_MXFP4_MOE", "MOSTLY_NVFP4", "MOSTLY_Q1_0"}
    names = []
    for member in gguf.LlamaFileType.__members__:
        if member in skip:
            continue
        names.append("F32" if member == "ALL_F32" else member.removeprefix("MOSTLY_"))
    return names
