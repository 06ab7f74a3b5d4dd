"""An MLX variant as variants.yaml gives it, its name, and what mlx-lm will write for it (sizes by module)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ...config import FieldProblem, Strict
from ...sizes import model_tensors, safetensors_bytes

# mode -> (bits, group size) it allows; affine takes any of BITS x GROUP_SIZES.
FIXED_MODES = {"mxfp4": (4, 32), "nvfp4": (4, 16), "mxfp8": (8, 32)}
BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 64  # mlx-lm's and mlx-community's
RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")  # mlx_lm.convert's quant predicates
# Published model configs carry the dtype; mlx-lm converts floats to it (norms, scales, unquantized tensors).
DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
LEAKED_TOKENIZER_KEYS = ("is_local", "local_files_only")  # transformers 5 writes them on save_pretrained


class MLXSpec(Strict):
    format: Literal["mlx"]
    bits: Literal[2, 3, 4, 5, 6, 8] = 4
    group_size: Literal[16, 32, 64, 128] | None = Field(None, description="default 64 (affine) or the mode's own")
    mode: Literal["affine", "mxfp4", "nvfp4", "mxfp8"] = "affine"
    recipe: Literal["mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"] | None = Field(
        None, description="mlx-lm's mixed-precision predicate (more bits for v_proj, down_proj, lm_head)"
    )
    default: bool = False

    @model_validator(mode="after")
    def _combination(self) -> MLXSpec:
        given = self.model_fields_set
        if self.mode in FIXED_MODES:
            bits, group = FIXED_MODES[self.mode]
            if "bits" in given and self.bits != bits:
                raise FieldProblem(f"mode {self.mode} is {bits}-bit, not {self.bits}", f"drop bits or set bits: {bits}")
            if self.group_size not in (None, group):
                raise FieldProblem(f"mode {self.mode} has group size {group}, not {self.group_size}", "drop group_size")
            if self.recipe:
                raise FieldProblem(f"recipe {self.recipe} is affine only", "drop recipe or use mode: affine")
            object.__setattr__(self, "bits", bits)
            object.__setattr__(self, "group_size", group)
            return self
        if self.group_size is None:
            object.__setattr__(self, "group_size", DEFAULT_GROUP_SIZE)
        if self.group_size not in GROUP_SIZES:
            raise FieldProblem(f"affine group size {self.group_size} is not one of {GROUP_SIZES}", "use 32, 64 or 128")
        if self.recipe and "bits" in given:
            raise FieldProblem(
                f"recipe {self.recipe} sets the bits itself (low_high)", "drop bits, or drop recipe for uniform bits"
            )
        return self

    def module_bits(self) -> tuple[int, int] | None:
        """(low, high) bits of a mixed recipe."""
        if not self.recipe:
            return None
        low, high = self.recipe.removeprefix("mixed_").split("_")
        return int(low), int(high)


def mlx_name(spec: MLXSpec) -> str:
    """mlx-community's suffixes: `mlx-4bit`, `mlx-8bit`, `mlx-mxfp4`, `mlx-mixed_3_6`; other groups add `-32g`."""
    if spec.mode in FIXED_MODES:
        return f"mlx-{spec.mode}"
    stem = f"mlx-{spec.recipe}" if spec.recipe else f"mlx-{spec.bits}bit"
    return stem + ("" if spec.group_size == DEFAULT_GROUP_SIZE else f"-{spec.group_size}g")


def _high_bits_index(index: int, layers: int) -> bool:
    """mlx-lm's mixed predicate (convert.mixed_quant_predicate_builder): which layers get the high bits."""
    return index < layers // 8 or index >= 7 * layers // 8 or (index - layers // 8) % 3 == 2


def module_bits(spec: MLXSpec, name: str, layers: int) -> int:
    """Bits mlx-lm gives module `name` (HF name without `.weight`) under this spec."""
    mixed = spec.module_bits()
    if mixed is None:
        return spec.bits
    low, high = mixed
    if name == "lm_head":
        return high
    if ".layers." in name and ("v_proj" in name or "down_proj" in name):
        return high if _high_bits_index(int(name.split(".")[2]), layers) else low
    return low


def quantized_modules(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(module, [out, in]) of every module mlx-lm quantizes: the linears, the embedding and an untied head."""
    out = []
    for t in model_tensors(config):
        name = t.name.removesuffix(".weight")
        if t.is_linear or name in ("model.embed_tokens", "lm_head"):
            out.append((name, t.shape))
    return out


def predict_bytes(config: dict, spec: MLXSpec) -> int:
    """Packed uint32 weights, scales (+ biases for affine) per group, the rest in the model's dtype.

    mlx-lm writes one shard below 5 GB (make_shards) or several; each shard's header is
    a few hundred bytes per tensor, counted here as one file's.
    """
    dtype = dtype_of(config)
    width = 2 if dtype != "float32" else 4
    layers = config["num_hidden_layers"]
    entries = []
    quantized = {name for name, _ in quantized_modules(config)}
    assert spec.group_size is not None
    for t in model_tensors(config):
        name = t.name.removesuffix(".weight")
        if name not in quantized:
            entries.append((t.name, DTYPES[dtype], t.shape, t.numel * width))
            continue
        out_f, in_f = t.shape
        bits = module_bits(spec, name, layers)
        groups = in_f // spec.group_size
        entries.append((t.name, "U32", (out_f, in_f * bits // 32), out_f * in_f * bits // 8))
        if spec.mode == "affine":
            entries += [
                (f"{name}.scales", DTYPES[dtype], (out_f, groups), out_f * groups * width),
                (f"{name}.biases", DTYPES[dtype], (out_f, groups), out_f * groups * width),
            ]
        else:
            entries.append((f"{name}.scales", "U8", (out_f, groups), out_f * groups))
    return safetensors_bytes(entries)


def dtype_of(config: dict) -> str:
    """The dtype mlx-lm is told to write floats in: the checkpoint's own, float16 when it names none."""
    value = config.get("dtype") or config.get("torch_dtype") or "float16"
    return value if value in DTYPES else "float16"


def mlx_config(config: dict) -> dict:
    """config.json as mlx-lm reads it: rope settings at the top level, where its model classes look."""
    out = dict(config)
    rope = config.get("rope_parameters") or {}
    if "rope_theta" not in out and "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default" and not out.get("rope_scaling"):
        out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return out
