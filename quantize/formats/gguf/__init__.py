"""GGUF: an F16 conversion on the `gguf` package, quantized by llama.cpp, read by llama.cpp.

The package holds the converter (`convert`), llama.cpp's quantizer (`quantize`), the
importance matrix (`imatrix`), the llama.cpp loader (`llamacpp`), the build step with its
shared caches (`build`) and the size prediction by dry run (`sizes`); this module is the
format as the pipeline sees it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import gguf
from pydantic import Field, field_validator, model_validator

from ...card.markdown import HUB, CardInputs, Row, base_ppl, chat_prompt, gb, quality, table
from ...config import FieldProblem, SafeName, Strict
from ...errors import QuantizeError
from ...naming import is_safe_name
from ...streaming import chunk_rows
from ..base import BuildJob, EngineResult, Format, Needs, PlanWork
from ..clients import LLAMA_CPP, Support

GGUF_RAM_OVERHEAD = int(2.5e9)  # publishers' "max RAM = file size + 2.5 GB" for llama.cpp on CPU
DEFAULT_RUN_SEQ_LEN = 4096
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


def imatrix_by_default(quant_type: str) -> bool:
    """k-quants and IQ types weigh their rounding by an importance matrix; legacy and 8/16-bit types ignore one."""
    return quant_type.startswith("IQ") or "_K" in quant_type


def requires_imatrix(quant_type: str) -> bool:
    """IQ types (and Q2_K_S) are made with an importance matrix or not at all: static ones lose too much."""
    from .quantize import NEEDS_IMATRIX

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
        from .mix import CANDIDATES

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
        from .mix import CANDIDATES

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
    from ...sizes import param_count

    if spec.max_size_gb is not None:
        return int(spec.max_size_gb * 1e9)
    assert spec.target_bpw is not None  # GGUFSpec._one_target: a mix has one of the two
    return int(spec.target_bpw * param_count(config) / 8)


def model_meta(project):
    """The GGUF header's general.* fields, from the config."""
    from .convert import ModelMeta

    cfg = project.config
    return ModelMeta(
        name=cfg.base_model.display_name,
        base_model=cfg.base_model.id,
        quantized_by=cfg.quantized_by,
        license=cfg.base_model.license,
    )


class GGUFScorer:
    """A GGUF loaded in llama.cpp, scored on the same token ids as every other format."""

    model = None  # no torch module: memory is the process's RSS

    def __init__(self, path: Path, n_ctx: int):
        from .llamacpp import load_gguf

        self.llm = load_gguf(path, n_ctx=n_ctx)

    def logits(self, window):
        from .llamacpp import gguf_logits

        return gguf_logits(self.llm, window)

    def greedy(self, ids: list[int], max_new_tokens: int, stop: int | None, pad: int | None = None) -> list[int]:
        from .llamacpp import gguf_greedy

        return gguf_greedy(self.llm, ids, max_new_tokens, stop=stop)


def _example(c: CardInputs) -> Row:
    """The row the examples use: Q4_K_M when there is one, as most users want it."""
    return next((r for r in c.rows if r.variant.spec.quant_type == "Q4_K_M"), c.rows[0])


def _file(row: Row) -> str:
    return next(f.path for f in row.report.files if f.path.endswith(".gguf"))


def _repacked(quant_type: str) -> bool:
    """llama.cpp's CPU backend copies Q4_0/Q4_K/IQ4_NL weights into interleaved layouts beside the mapped file:
    loading a 7B Q4_K_M (4.4 GB) for the check peaked at 10.4 GB; Q8_0 (7.7 GB) at 9.0 GB."""
    return quant_type.startswith(("Q4_0", "Q4_K", "IQ4_NL"))


class GGUF(Format):
    name = "gguf"
    title = "GGUF"
    spec_type = GGUFSpec
    engine_packages = ("gguf", "llama-cpp-python")
    family_line = "GGUF models for CPU (and GPU offload) inference with llama.cpp"
    family_rank = 2
    plot_marker = "^"
    needs_default = False  # every file goes on main anyway
    max_ram_is_load = True

    def complete(self, spec: GGUFSpec, top_level: str) -> GGUFSpec:
        """k-quant, IQ and budget files get an importance matrix from the project's calibration recipe unless
        `imatrix: false`; after this, `imatrix` is a recipe name or None (static)."""
        if spec.imatrix is False:
            return spec.model_copy(update={"imatrix": None})
        if spec.imatrix is True or (spec.imatrix is None and (spec.is_mix or imatrix_by_default(spec.label))):
            return spec.model_copy(update={"imatrix": top_level})
        return spec

    def names(self, spec: GGUFSpec) -> tuple[str, str]:
        """`gguf-q8_0`; with an importance matrix `gguf-i1-q4_k_m`, after the `i1-` files users know;
        a budget mix `gguf-i1-mix-4.5bpw`."""
        name = f"gguf-{'i1-' if spec.imatrix else ''}{spec.label.lower()}"
        return name, name

    def calibration(self, spec: GGUFSpec, top_level: str) -> str | None:
        # only an importance matrix needs calibration tokens; `complete` left a recipe name or None
        return spec.imatrix if isinstance(spec.imatrix, str) else None

    def calibration_overrides(self, spec: GGUFSpec) -> tuple[int | None, int | None]:
        return None, None

    def validate(self, spec, config: dict, config_file: Path, where: str, name: str) -> None:
        from .convert import check_architecture

        check_architecture(config, config_file)
        if spec.is_mix:
            from .mix import check_budget

            field = "target_bpw" if spec.target_bpw is not None else "max_size_gb"
            check_budget(config, budget_bytes(spec, config), spec.candidates, where, f"variant {name}: {field}")

    def engine_inputs(self, spec: GGUFSpec) -> dict[str, str]:
        from .build import CONVERTER_VERSION

        inputs = {"converter": str(CONVERTER_VERSION)}
        if spec.is_mix:  # how sensitivities are measured decides the per-tensor types
            from .mix import MEASURE_VERSION, PROBE_TOKENS, PROBE_TYPE, SAMPLE_ROWS

            inputs["mix"] = f"v{MEASURE_VERSION} rows={SAMPLE_ROWS} probe={PROBE_TYPE}x{PROBE_TOKENS}"
        return inputs

    def predict_bytes(self, planner, spec: GGUFSpec) -> int | None:
        """One skeleton and one dry run per type for the whole project, cached on the planner."""
        cache = planner.cache.setdefault(self.name, None)
        if cache is None:
            from .sizes import predict_gguf_many

            types = sorted(
                {v.spec.quant_type for v in planner.project.variants if v.format == self.name and not v.spec.is_mix}
            )
            has_tokenizer = planner.model_dir is not None and any(
                (planner.model_dir / n).is_file() for n in ("tokenizer.json", "tokenizer.model")
            )
            cache = planner.cache[self.name] = predict_gguf_many(
                planner.config, types, planner.model_dir if has_tokenizer else None
            )
        if spec.is_mix:  # the walk fills the budget to within one tensor's upgrade
            return budget_bytes(spec, planner.config)
        return cache.get(spec.quant_type)

    def plan_work(self, planner, variant) -> PlanWork:
        spec = variant.spec
        file = file_name(planner.project.config.base_model.display_name, spec.label, imatrix=bool(spec.imatrix))
        work = "F16 conversion (shared)"
        if spec.imatrix:
            recipe = planner.recipe(spec.imatrix)
            work += f"; imatrix on {recipe.samples} x {recipe.seq_len} tokens of {spec.imatrix}"
        if spec.is_mix:
            work += (
                f"; per-tensor sensitivity (shared), types chosen to {budget_bytes(spec, planner.config) / 1e9:.3f} GB"
            )
        return PlanWork(file, work, DEFAULT_RUN_SEQ_LEN, load_overhead=GGUF_RAM_OVERHEAD)

    def stage_needs(self, planner, variant) -> dict[str, Needs]:
        """The converter maps one shard at a time (hub shards are at most 5 GB) and holds one tensor in float32
        and 16-bit; the imatrix streams one float32 layer (half precision on a GPU) plus the calibration batch's
        hidden states; llama.cpp quantizes by tensor."""
        spec = variant.spec
        f16 = 2 * planner.params
        size = self.predict_bytes(planner, spec) or 0
        largest = planner.config["vocab_size"] * planner.config["hidden_size"]
        shards = [p.stat().st_size for p in planner.model_dir.glob("*.safetensors")] if planner.model_dir else []
        shard = max(shards) if shards else min(planner.fp16_bytes, SHARD_LIMIT)
        # measured at 7B (8 shards of 2 GB): 3.1 GB, where this predicts 3.7 with the process
        needs = {"convert": Needs(ram=shard + 6 * largest, disk_cache=f16)}
        if spec.imatrix:
            recipe = planner.recipe(spec.imatrix)
            needs["imatrix"] = planner.stream_needs(chunk_rows(recipe.samples, recipe.seq_len), recipe.seq_len)
        if spec.is_mix:
            from .mix import measure_ram

            needs["measure"] = Needs(ram=measure_ram(planner.config, len(spec.candidates)))
        # measured at 7B: 1.6 GB (Q8_0) and 3.3 GB (i1-Q4_K_M, after the imatrix stage in the same process)
        needs["quantize"] = Needs(ram=int(0.17 * planner.fp16_bytes), disk_out=size)
        repacked = spec.is_mix or _repacked(spec.label)  # a mix may hold Q4_K/Q4_0/IQ4_NL tensors
        needs["check"] = planner.check_needs(size if planner.gpu or not repacked else 2 * size)
        return needs

    def plan_location(self, variant, file: str) -> str:
        return file

    def support(self, spec: GGUFSpec) -> list[Support]:
        return [Support("llama.cpp", True, LLAMA_CPP)]

    def runner(self, spec: GGUFSpec) -> str:
        """An importance matrix runs the model forward (a GPU runner); a plain conversion does not."""
        return "gpu" if spec.imatrix else "cpu"

    def build(self, job: BuildJob) -> EngineResult:
        from .build import build_gguf

        return build_gguf(job.base, model_meta(job.project), job.variant.spec, job.calibration, job.out, job.stages)

    def load(self, folder: Path, variant, n_ctx: int, base_config: dict) -> GGUFScorer:
        found = next(folder.glob("*.gguf"), None)
        if found is None:
            raise QuantizeError(
                f"{folder}: no .gguf file to check",
                fix=f"rebuild it: python -m quantize build --variant {variant.name} --force",
            )
        return GGUFScorer(found, n_ctx)

    def targets(self, variant) -> list[tuple[str, bool]]:
        """Its own branch, and every GGUF file also on main (beside the others)."""
        return [(variant.branch, True), ("main", False)]

    # -- card -------------------------------------------------------------------------------------------------------
    def card_tags(self, rows: list[Row]) -> list[str]:
        return ["gguf", "quantized", "llama.cpp"]

    def card_engine(self, rows: list[Row]) -> str:
        return f"llama.cpp (llama-cpp-python) {rows[0].report.versions.get('llama-cpp-python', '')}".strip()

    def card_provided(self, c: CardInputs) -> str:
        head = ["Name", "Quant method", "Bits", "Size", "Max RAM required", "PPL", "Δ PPL", "KLD", "Use case"]
        ppl = base_ppl(c)
        base = (
            None
            if ppl is None
            else ["unquantized", "-", "16", "-", "-", f"{ppl:.3f}", "-", "-", "the original model, for reference"]
        )
        rows = []
        for r in sorted(c.rows, key=lambda r: (r.report.bits_per_weight, r.variant.name)):
            spec = r.variant.spec
            nominal, use = GGUF_USE.get(spec.label, (None, ""))
            name = _file(r)
            method = spec.label + (" + imatrix" if spec.imatrix else "")
            if r.report.mix is not None:
                mix = r.report.mix
                method = f"per-tensor mix to {gb(mix.budget_bytes)}" + (" + imatrix" if spec.imatrix else "")
                counts = ", ".join(f"{n} {t}" for t, n in sorted(mix.type_counts.items(), key=lambda kv: -kv[1]))
                use = f"types chosen per tensor by measured sensitivity to fit the budget: {counts}"
            if spec.imatrix:
                use += f"; importance matrix from {spec.imatrix}"
            m = r.report.checks.memory if r.report.checks else None
            ram = gb(m.max_ram_required_bytes) if m and m.max_ram_required_bytes else "-"
            bits = f"{nominal if nominal is not None else '-'} ({r.report.bits_per_weight:.2f} bpw)"
            rows.append(
                [
                    f"[{name}]({HUB}/{c.repo}/blob/main/{name}) (branch `{r.variant.branch}`)",
                    method,
                    bits,
                    gb(r.size),
                    ram,
                    *quality(r),
                    use,
                ]
            )
        return (
            "## Provided files\n\n"
            + table(head, base, rows)
            + "\n\nMax RAM required assumes no GPU offloading: the file size plus 2.5 GB. "
            "Offloading layers to a GPU moves that memory to VRAM."
        )

    def card_download(self, c: CardInputs) -> str:
        repo, row = c.repo, _example(c)
        return "\n".join(
            [
                "## How to download",
                "",
                "Every file is on `main` and on its own branch. Fetch just the one you need:",
                "",
                "```shell",
                f"hf download {repo} {_file(row)} --local-dir .",
                f"hf download {repo} --revision {row.variant.branch} --local-dir {row.variant.branch}",
                "```",
                "",
                "With huggingface_hub older than 1.0 the command is `huggingface-cli download` "
                "with the same arguments.",
            ]
        )

    def card_usage(self, c: CardInputs) -> str:
        first, prompt = _file(_example(c)), chat_prompt(c)
        return "\n".join(
            [
                "## How to run it",
                "",
                "llama.cpp, as a chat (the prompt template is in the file):",
                "",
                "```shell",
                f"llama-cli -m {first} -c 2048 -cnv",
                "```",
                "",
                "or with a raw prompt:",
                "",
                "```shell",
                f"llama-cli -m {first} -c 2048 --temp 0.7 -e -p {prompt!r}",
                "```",
                "",
                "llama-cpp-python:",
                "",
                "```python",
                "from llama_cpp import Llama",
                "",
                f"llm = Llama(model_path={first!r}, n_ctx=2048)",
                f"print(llm({prompt!r}, max_tokens=256)['choices'][0]['text'])",
                "```",
            ]
        )
