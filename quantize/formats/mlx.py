"""MLX: Apple silicon's format, written by mlx-lm's own converter as mlx-community publishes it.

mlx-lm reads a transformers checkpoint directly, so the build is one `mlx_lm.convert`
call over a view of the base folder whose config.json carries what mlx-lm looks for
(transformers 5 moved `rope_theta` into `rope_parameters`, which mlx-lm ignores: it
would silently fall back to 10000), with the dtype given explicitly (mlx-lm reads
`torch_dtype`, which transformers 5 no longer writes). What was written is then checked
(every linear layer quantized as asked, rope where mlx-lm reads it) before it is kept.
Checks load the files through mlx-lm and compute in float32 on a CPU: quantized matmuls
in bfloat16 there carry about 10x the error (mean KL 6.4e-3 against 1.5e-4 at 8 bits).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..basemodel import TOKENIZER_FILES
from ..card.markdown import CardInputs, Row, base_ppl, branch_cell, gb, quality, table
from ..config import FieldProblem, Strict
from ..errors import ConfigError, EngineError
from ..outputs import assert_no_local_paths, write_json
from ..shapes import check_group_size
from ..sizes import model_tensors, safetensors_bytes
from .base import BuildJob, EngineResult, Format, Needs, PlanWork
from .clients import MLX_LM, Support, table_rows

log = logging.getLogger(__name__)

# mode -> (bits, group size) it allows; affine takes any of BITS x GROUP_SIZES.
FIXED_MODES = {"mxfp4": (4, 32), "nvfp4": (4, 16), "mxfp8": (8, 32)}
BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 64  # mlx-lm's and mlx-community's
RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")  # mlx_lm.convert's quant predicates
RUN_SEQ_LEN = 4096  # the context `plan` sizes the run memory for (no calibration length to go by)
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
    dtype = _dtype(config)
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


def _dtype(config: dict) -> str:
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


def check_architecture(config: dict, config_file: Path) -> None:
    """mlx-lm has one module per model_type; refuse at config time one it cannot load (found without importing)."""
    spec = importlib.util.find_spec("mlx_lm")
    model_type = config.get("model_type")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            config_file, "format", "mlx-lm is not installed", "pip install 'mlx[cpu]==0.32.4' 'mlx-lm==0.32.2'"
        )
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    # mlx-lm maps a few model types onto another's module (mistral -> llama)
    remapped = {"mistral": "llama"}.get(str(model_type), str(model_type))
    if not (models / f"{remapped}.py").is_file():
        raise ConfigError(
            config_file,
            "model_type",
            f"mlx-lm 0.32 has no model for {model_type!r}",
            "drop the mlx variants for this model, or use a Llama/Mistral checkpoint",
        )


def convert(base_path: Path, spec: MLXSpec, out: Path) -> None:
    """mlx_lm.convert over a patched view of the base folder, into `out` (which must not exist yet)."""
    from mlx_lm import convert as mlx_convert

    base_path = Path(base_path).resolve()
    config = json.loads((base_path / "config.json").read_text())
    view = out.with_name(out.name + ".src")
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir()
    try:
        for item in base_path.iterdir():
            if item.name != "config.json":
                (view / item.name).symlink_to(item)
        write_json(view / "config.json", mlx_config(config))
        log.info("mlx-lm: converting %s (%s)", base_path.name, mlx_name(spec))
        mlx_convert(
            str(view),
            str(out),
            quantize=True,
            q_bits=spec.bits,
            q_group_size=spec.group_size,
            q_mode=spec.mode,
            dtype=_dtype(config),
            quant_predicate=spec.recipe,
        )
    finally:
        shutil.rmtree(view, ignore_errors=True)


def finish(base_path: Path, spec: MLXSpec, out: Path) -> None:
    """Make the folder what mlx-community publishes, then verify what mlx-lm will read from it."""
    (out / "README.md").unlink(missing_ok=True)  # mlx-lm's stub; the repo's card is written by `card`
    for name in TOKENIZER_FILES:  # the base's own tokenizer files, byte for byte, as every other format ships
        source = Path(base_path) / name
        if source.is_file():
            shutil.copy2(source, out / name)
    tok_config = out / "tokenizer_config.json"
    if tok_config.is_file():
        data = json.loads(tok_config.read_text())
        if any(k in data for k in LEAKED_TOKENIZER_KEYS):
            write_json(tok_config, {k: v for k, v in data.items() if k not in LEAKED_TOKENIZER_KEYS})
    base = json.loads((Path(base_path) / "config.json").read_text())
    verify(out, spec, mlx_config(base))
    assert_no_local_paths(out)


def verify(out: Path, spec: MLXSpec, expected: dict) -> None:
    """Refuse a folder mlx-lm would read differently from what was asked: rope, quantization, every module packed."""
    config = json.loads((out / "config.json").read_text())
    for key in ("rope_theta", "rope_scaling"):
        if expected.get(key) is not None and config.get(key) != expected[key]:
            raise EngineError(f"mlx-lm wrote {key}={config.get(key)!r}, the base has {expected[key]!r}")
    q = config.get("quantization") or {}
    if (q.get("bits"), q.get("group_size"), q.get("mode")) != (
        spec.bits if not spec.recipe else q.get("bits"),
        spec.group_size,
        spec.mode,
    ):
        raise EngineError(f"mlx-lm wrote quantization {q}, expected {spec.bits}-bit g{spec.group_size} {spec.mode}")
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    missing = [m for m, _ in quantized_modules(expected) if f"{m}.scales" not in index]
    if missing:
        raise EngineError(
            f"mlx-lm left {len(missing)} module(s) unquantized (first: {missing[0]}); "
            f"group size {spec.group_size} must divide every input width"
        )


class MLXScorer:
    """The files loaded by mlx-lm, computing in float32 (on a CPU bfloat16 quantized matmuls lose ~10x accuracy)."""

    model = None  # not a torch module: memory is the process's RSS

    def __init__(self, folder: Path):
        import mlx.core as mx
        from mlx_lm import load

        self.mx = mx
        self.net = load(str(folder))[0]
        self.net.set_dtype(mx.float32)

    def logits(self, window: np.ndarray) -> np.ndarray:
        mx = self.mx
        out = self.net(mx.array(np.asarray(window)[None].astype(np.int32)))[0].astype(mx.float32)
        return np.array(out)

    def greedy(self, ids: list[int], max_new_tokens: int, stop: int | None, pad: int | None = None) -> list[int]:
        from mlx_lm.generate import generate_step

        new: list[int] = []
        prompt = self.mx.array(np.asarray(ids, dtype=np.int32))
        for token, _ in generate_step(prompt, self.net, max_tokens=max_new_tokens):
            new.append(int(token))
            if stop is not None and new[-1] == stop:
                break
        return new


class MLX(Format):
    name = "mlx"
    title = "MLX"
    spec_type = MLXSpec
    engine_packages = ("mlx", "mlx-lm")
    family_line = "MLX models for Apple silicon (mlx-lm)"
    family_rank = 3
    plot_marker = "D"

    def names(self, spec: MLXSpec) -> tuple[str, str]:
        name = mlx_name(spec)
        return name, name

    def calibration(self, spec: MLXSpec, top_level: str) -> str | None:
        return None  # round-to-nearest by mlx-lm: no calibration tokens

    def calibration_overrides(self, spec: MLXSpec) -> tuple[int | None, int | None]:
        return None, None

    def validate(self, spec: MLXSpec, config: dict, config_file: Path, where: str, name: str) -> None:
        check_architecture(config, config_file)
        assert spec.group_size is not None
        check_group_size(config, spec.group_size, where, name)

    def predict_bytes(self, planner, spec: MLXSpec) -> int:
        return predict_bytes(planner.config, spec)

    def plan_work(self, planner, variant) -> PlanWork:
        return PlanWork("model.safetensors", "mlx-lm conversion (round to nearest, no calibration)", RUN_SEQ_LEN)

    def stage_needs(self, planner, variant) -> dict[str, Needs]:
        """mlx-lm maps the base lazily and evaluates the quantized model shard by shard as it saves: about the
        output plus one 16-bit layer's work; checks compute in float32, which doubles the scales."""
        size = self.predict_bytes(planner, variant.spec)
        quantize = Needs(ram=size + planner.layer_bytes(4), disk_out=size)
        return {"quantize": quantize, "check": planner.check_needs(int(size * 1.25))}

    def runner(self, spec: MLXSpec) -> str:
        return "cpu"  # no forward pass: a CPU runner builds it (and mlx on Linux has no GPU backend)

    def support(self, spec: MLXSpec) -> list[Support]:
        return [
            Support("mlx-lm", True, MLX_LM, "Linux CPU build tested; Apple silicon (Metal) runs the same files"),
            Support("LM Studio", None, "untested", ""),
        ]

    def build(self, job: BuildJob) -> EngineResult:
        spec = job.variant.spec
        with job.stages.stage("quantize"):
            target = job.out / ".engine"
            convert(job.base.path, spec, target)
            for item in target.iterdir():
                item.replace(job.out / item.name)
            target.rmdir()
            finish(job.base.path, spec, job.out)
        return EngineResult(device="cpu", dtype=_dtype(job.base.config))

    def load(self, folder: Path, variant, n_ctx: int, base_config: dict) -> MLXScorer:
        return MLXScorer(folder)

    # -- card -------------------------------------------------------------------------------------------------------
    def card_tags(self, rows: list[Row]) -> list[str]:
        return ["mlx", "quantized", "mlx-lm"]

    def card_engine(self, rows: list[Row]) -> str:
        versions = rows[0].report.versions
        return f"mlx-lm {versions.get('mlx-lm', '')} (mlx {versions.get('mlx', '')})"

    def card_provided(self, c: CardInputs) -> str:
        head = ["Branch", "Bits", "GS", "Mode", "Size", "BPW", "Loads in", "PPL", "Δ PPL", "KLD", "Desc"]
        ppl = base_ppl(c)
        base = None if ppl is None else ["unquantized", "16", "-", "-", "-", "16", "-", f"{ppl:.3f}", "-", "-", "-"]
        rows = []
        for r in sorted(c.rows, key=lambda r: (not r.variant.default, r.report.bits_per_weight)):
            spec = r.variant.spec
            mixed = spec.module_bits()
            bits = f"{mixed[0]}/{mixed[1]}" if mixed else str(spec.bits)
            desc = (
                f"mixed: {mixed[1]}-bit v_proj/down_proj in some layers and lm_head, {mixed[0]}-bit elsewhere"
                if mixed
                else f"{spec.bits}-bit {spec.mode}"
            )
            rows.append(
                [
                    branch_cell(c, r.variant),
                    bits,
                    str(spec.group_size),
                    spec.mode,
                    gb(r.size),
                    f"{r.report.bits_per_weight:.2f}",
                    ", ".join(self.clients(spec)),
                    *quality(r),
                    desc,
                ]
            )
        intro = (
            "Each branch holds one set of parameters; `main` holds the default. Made by mlx-lm's converter "
            "(round to nearest, per group of GS weights: affine keeps a scale and a bias per group, mxfp4/nvfp4/"
            "mxfp8 an 8-bit shared scale). PPL and KLD are measured against the unquantized model on held-out text, "
            "computed by mlx-lm in float32 on the same token ids as the other formats of this model (lower is "
            "better). BPW counts every byte of the weight files, embeddings included."
        )
        return f"## Provided files, and MLX parameters\n\n{intro}\n\n{table(head, base, rows)}"

    def card_download(self, c: CardInputs) -> str:
        repo = c.repo
        example = next((r.variant.branch for r in c.rows if not r.variant.default), c.rows[0].variant.branch)
        return "\n".join(
            [
                "## How to download from branches",
                "",
                "```shell",
                f"hf download {repo} --revision {example} --local-dir {repo.split('/')[-1]}-{example}",
                "```",
                "",
                f"With huggingface_hub older than 1.0: `huggingface-cli download {repo} --revision {example} "
                f"--local-dir {repo.split('/')[-1]}-{example}`.",
            ]
        )

    def card_usage(self, c: CardInputs) -> str:
        repo = c.repo
        example = next((r.variant.branch for r in c.rows if not r.variant.default), c.rows[0].variant.branch)
        local = f"{repo.split('/')[-1]}-{example}"
        return "\n".join(
            [
                "## How to run it",
                "",
                "On Apple silicon `pip install mlx-lm`; on Linux (CPU) `pip install 'mlx[cpu]' mlx-lm`. "
                "The default branch (`main`):",
                "",
                "```shell",
                f'mlx_lm.generate --model {repo} --prompt "Tell me about AI"',
                "```",
                "",
                "Another branch, downloaded as above:",
                "",
                "```shell",
                f'mlx_lm.generate --model ./{local} --prompt "Tell me about AI"',
                "```",
                "",
                "From Python:",
                "",
                "```python",
                "from mlx_lm import generate, load",
                "",
                f"model, tokenizer = load({repo!r}, revision={example!r})",
                "messages = [{'role': 'user', 'content': 'Tell me about AI'}]",
                "prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)",
                "print(generate(model, tokenizer, prompt=prompt, max_tokens=256))",
                "```",
                "",
                "## Compatibility",
                "",
                table(
                    ["Client", "Loads", "Checked with", "Note"],
                    None,
                    table_rows(self.support(c.rows[0].variant.spec)),
                ),
            ]
        )
