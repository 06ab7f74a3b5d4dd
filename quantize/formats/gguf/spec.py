"""A GGUF variant as variants.yaml gives it: its type or size budget, its file name, its header fields.

Kept apart from the format class (`__init__`) so the build step, the mix and the size
prediction read the spec without importing the format that calls them.
"""

from __future__ import annotations

from typing import Literal

import gguf
from pydantic import Field, field_validator, model_validator

from ...config import FieldProblem, SafeName, Strict
from ...naming import is_safe_name
from ...outputs import IMATRIX_SUFFIX, TENSOR_TYPES_SUFFIX
from ...sizes import param_count
from .convert import ModelMeta
from .mix import CANDIDATES
from .quantize import NEEDS_IMATRIX

GGUF_RAM_OVERHEAD = int(2.5e9)  # publishers' "max RAM = file size + 2.5 GB" for llama.cpp on CPU
SHARD_LIMIT = int(5e9)  # the largest safetensors shard the hub's writers make (transformers' default max_shard_size)

# What each llama.cpp type is for, in one line; nominal bits as people quote them.
GGUF_USE = {
    "Q2_K": (2, "smallest; large quality loss, for when nothing else fits"),
    "Q3_K_S": (3, "very small; high quality loss"),
    "Q3_K_M": (3, "very small; high quality loss"),
    "Q3_K_L": (3, "small; substantial quality loss"),
    "Q4_0": (4, "legacy 4-bit; prefer Q4_K_M"),
    "Q4_1": (4, "legacy 4-bit; prefer Q4_K_M"),
    "Q4_K_S": (4, "small; a little more loss than Q4_K_M"),
    "Q4_K_M": (4, "medium; balanced quality, the usual choice"),
    "Q5_0": (5, "legacy 5-bit; prefer Q5_K_M"),
    "Q5_1": (5, "legacy 5-bit; prefer Q5_K_M"),
    "Q5_K_S": (5, "large; low quality loss"),
    "Q5_K_M": (5, "large; very low quality loss"),
    "Q6_K": (6, "very large; extremely low quality loss"),
    "Q8_0": (8, "very large; nearly lossless, rarely needed"),
    "IQ4_XS": (4, "small; near Q4_K_S quality in less space (needs an importance matrix)"),
    "IQ4_NL": (4, "4-bit non-linear, 32-wide blocks (needs an importance matrix)"),
    "IQ3_M": (3, "very small; better than Q3_K_S at its size (needs an importance matrix)"),
    "IQ3_S": (3, "very small (needs an importance matrix)"),
    "IQ3_XS": (3, "very small (needs an importance matrix)"),
    "IQ3_XXS": (3, "very small; lower quality (needs an importance matrix)"),
    "IQ2_M": (2, "tiny; large quality loss (needs an importance matrix)"),
    "IQ2_S": (2, "tiny; large quality loss (needs an importance matrix)"),
    "IQ2_XS": (2, "tiny; very large quality loss (needs an importance matrix)"),
    "IQ2_XXS": (2, "tiny; very large quality loss (needs an importance matrix)"),
    "IQ1_M": (1, "extremely small; mostly for experiments"),
    "IQ1_S": (1, "extremely small; mostly for experiments"),
    "F16": (16, "unquantized 16-bit"),
    "BF16": (16, "unquantized bfloat16"),
}


def quant_types() -> list[str]:
    """Every file type llama.cpp writes for a dense model, named as on its command line (`Q4_K_M`).

    Ternary (TQ*), MoE-only and hardware-specific types are left out: they need models
    trained for them.
    """
    skip = {"GUESSED", "MOSTLY_TQ1_0", "MOSTLY_TQ2_0", "MOSTLY_MXFP4_MOE", "MOSTLY_NVFP4", "MOSTLY_Q1_0"}
    return [
        "F32" if m == "ALL_F32" else m.removeprefix("MOSTLY_") for m in gguf.LlamaFileType.__members__ if m not in skip
    ]


def file_name(model_name: str, quant_type: str, imatrix: bool = False) -> str:
    """`NAME.Q4_K_M.gguf`; the config refuses unsafe names, and this refuses them again before they reach a path."""
    if not is_safe_name(model_name):
        raise ValueError(f"unsafe model name {model_name!r} for a GGUF file name")
    return f"{model_name}.{'i1-' if imatrix else ''}{quant_type.upper()}.gguf"


def imatrix_name(model_name: str, recipe: str, project_recipe: str) -> str:
    """The importance matrix published beside the i1 files: `NAME.imatrix.gguf` (llama-imatrix's own default
    name is `imatrix.gguf`) for the project's calibration recipe, `NAME.RECIPE.imatrix.gguf` for another, so
    two matrices never share a name on the repo's main."""
    middle = "" if recipe == project_recipe else f".{recipe}"
    return f"{model_name}{middle}{IMATRIX_SUFFIX}"


def tensor_types_name(gguf_name: str) -> str:
    """A size-budget file's per-tensor types, as llama-quantize's `--tensor-type-file` reads them."""
    return gguf_name.removesuffix(".gguf") + TENSOR_TYPES_SUFFIX


def imatrix_by_default(quant_type: str) -> bool:
    """k-quants and IQ types weigh their rounding by an importance matrix; legacy and 8/16-bit types ignore one."""
    return quant_type.startswith("IQ") or "_K" in quant_type


def requires_imatrix(quant_type: str) -> bool:
    """IQ types (and Q2_K_S) are made with an importance matrix or not at all: static ones lose too much."""
    return quant_type.startswith("IQ") or quant_type in NEEDS_IMATRIX


class GGUFSpec(Strict):
    """One GGUF file: a llama.cpp type (`quant_type`), or a size budget (`target_bpw` / `max_size_gb`) that
    `mix` meets with per-tensor types chosen by measured sensitivity."""

    format: Literal["gguf"]
    quant_type: str | None = Field(None, description="a llama.cpp file type such as Q4_K_M")
    target_bpw: float | None = Field(None, gt=2.0, lt=8.5, description="bits per weight of the whole file")
    max_size_gb: float | None = Field(None, gt=0, description="largest file size, in GB (1e9 bytes)")
    mix_types: tuple[str, ...] | None = Field(
        None, description="the ggml tensor types a budget mix may choose from; default: mix.CANDIDATES"
    )
    imatrix: SafeName | bool | None = Field(
        None,
        description="calibration recipe for llama.cpp's importance matrix; default: the project's recipe for "
        "k-quant, IQ and budget files; false: a static file",
    )
    default: bool = False

    @field_validator("quant_type")
    @classmethod
    def _known_type(cls, value: str | None) -> str | None:
        if value is None:
            return None
        valid = quant_types()
        if value.upper() not in valid:
            raise ValueError(f"unknown GGUF type {value!r}; valid: {', '.join(valid)}")
        return value.upper()

    @field_validator("mix_types")
    @classmethod
    def _known_mix_types(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        unknown = [t for t in value if t.upper() not in CANDIDATES]
        if unknown or not value:
            raise FieldProblem(
                f"{unknown[0] if unknown else 'an empty list'} is not a mix type",
                f"use some of: {', '.join(CANDIDATES)}",
            )
        return tuple(dict.fromkeys(t.upper() for t in value))

    @property
    def candidates(self) -> tuple[str, ...]:
        """The types a budget mix measures and chooses from."""
        return self.mix_types or CANDIDATES

    @model_validator(mode="after")
    def _one_target(self) -> GGUFSpec:
        given = [k for k in ("quant_type", "target_bpw", "max_size_gb") if getattr(self, k) is not None]
        if len(given) != 1:
            raise FieldProblem(
                f"gives {' and '.join(given) or 'none of quant_type, target_bpw, max_size_gb'}",
                "give exactly one: `quant_type: Q4_K_M`, `target_bpw: 4.5` or `max_size_gb: 4.2`",
            )
        if self.mix_types is not None and not self.is_mix:
            raise FieldProblem("mix_types applies to a size budget only", "remove it, or give target_bpw / max_size_gb")
        if self.imatrix is False and (self.quant_type is None or requires_imatrix(self.quant_type)):
            what = self.quant_type or "a size-budget mix"
            raise FieldProblem(
                f"{what} cannot be made without an importance matrix (imatrix: false)",
                "remove `imatrix: false` (the project's calibration recipe is used) or pick a k-quant such as Q4_K_M",
            )
        return self

    @property
    def label(self) -> str:
        """The type as file names show it: `Q4_K_M`, or a budget mix `MIX-4.5BPW` / `MIX-4.2GB`."""
        if self.quant_type is not None:
            return self.quant_type
        if self.target_bpw is not None:
            return f"MIX-{self.target_bpw:g}BPW"
        return f"MIX-{self.max_size_gb:g}GB"

    @property
    def is_mix(self) -> bool:
        return self.quant_type is None


def budget_bytes(spec: GGUFSpec, config: dict) -> int:
    """The whole file's byte budget: `max_size_gb`, or `target_bpw` over the model's parameters."""
    if spec.max_size_gb is not None:
        return int(spec.max_size_gb * 1e9)
    assert spec.target_bpw is not None  # GGUFSpec._one_target: a mix has one of the two
    return int(spec.target_bpw * param_count(config) / 8)


def model_meta(project):
    """The GGUF header's general.* fields, from the config."""
    cfg = project.config
    return ModelMeta(
        name=cfg.base_model.display_name,
        base_model=cfg.base_model.id,
        quantized_by=cfg.quantized_by,
        license=cfg.base_model.license,
    )
