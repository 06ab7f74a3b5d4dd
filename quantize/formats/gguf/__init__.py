"""GGUF: an F16 conversion on the `gguf` package, quantized by llama.cpp, read by llama.cpp.

The package holds the spec (`spec`), the converter (`convert`), llama.cpp's quantizer
(`quantize`), the importance matrix (`imatrix`), the budget mix (`mix`), the llama.cpp
loader (`llamacpp`), the build step with its shared caches (`build`), the size prediction
by dry run (`sizes`) and the card sections (`card`); this module is the format as the
pipeline sees it.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DamagedOutput
from ...outputs import is_model_file
from ...streaming import chunk_rows
from ..base import DEFAULT_RUN_SEQ_LEN, BuildJob, EngineResult, Format, Needs, PlanWork
from ..clients import LLAMA_CPP, Support
from ..sections import CardInputs, Row
from . import card
from .build import CONVERTER_VERSION, build_gguf
from .convert import check_architecture
from .llamacpp import GGUFScorer
from .mix import MEASURE_VERSION, PROBE_TOKENS, PROBE_TYPE, SAMPLE_ROWS, check_budget, measure_ram
from .sizes import predict_gguf_many
from .spec import (
    GGUF_RAM_OVERHEAD,
    SHARD_LIMIT,
    GGUFSpec,
    budget_bytes,
    file_name,
    imatrix_by_default,
    model_meta,
    quant_types,
    requires_imatrix,
)

__all__ = [
    "GGUF",
    "GGUFScorer",
    "GGUFSpec",
    "budget_bytes",
    "file_name",
    "imatrix_by_default",
    "model_meta",
    "quant_types",
    "requires_imatrix",
]


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
    library_name = "gguf"
    field_fixes = {
        "quant_type": "use a llama.cpp type such as Q4_K_M",
        "imatrix": "remove `imatrix: false` or give `imatrix: RECIPE` (a calibration recipe such as wikitext2)",
    }

    def needs_marked_default(self, variants) -> bool:
        """Every file goes on `main` of the -GGUF repo anyway: none has to be marked."""
        return False

    def max_ram(self, load_bytes: int | None) -> int | None:
        """Publishers state llama.cpp's "Max RAM required" for GGUF files: the load prediction (file + overhead)."""
        return load_bytes

    def load_note(self) -> str:
        return f"GGUF: file + {GGUF_RAM_OVERHEAD / 1e9:g} GB, as publishers state max RAM"

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
        check_architecture(config, config_file)
        if spec.is_mix:
            field = "target_bpw" if spec.target_bpw is not None else "max_size_gb"
            check_budget(config, budget_bytes(spec, config), spec.candidates, where, f"variant {name}: {field}")

    def engine_inputs(self, spec: GGUFSpec) -> dict[str, str]:
        inputs = {"converter": str(CONVERTER_VERSION)}
        if spec.is_mix:  # how sensitivities are measured decides the per-tensor types
            inputs["mix"] = f"v{MEASURE_VERSION} rows={SAMPLE_ROWS} probe={PROBE_TYPE}x{PROBE_TOKENS}"
        return inputs

    def predict_bytes(self, planner, spec: GGUFSpec) -> int | None:
        """One skeleton and one dry run per type for the whole project, cached on the planner."""
        cache = planner.cache.setdefault(self.name, None)
        if cache is None:
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
        return build_gguf(job, model_meta(job.project))

    def load(self, folder: Path, variant, n_ctx: int, base_config: dict) -> GGUFScorer:
        found = [p for p in sorted(folder.glob("*.gguf")) if is_model_file(p.name)]
        if len(found) != 1:  # a variant holds one model file; scoring "the first" once scored another's
            problem = f"{len(found)} model files ({', '.join(p.name for p in found)})" if found else "no .gguf file"
            raise DamagedOutput(folder, f"{problem}, a GGUF variant holds one", variant.name)
        return GGUFScorer(found[0], n_ctx)

    def targets(self, variant) -> list[tuple[str, bool]]:
        """Its own branch, and every GGUF file also on main (beside the others)."""
        return [(variant.branch, True), ("main", False)]

    # -- card -------------------------------------------------------------------------------------------------------
    def card_tags(self, rows: list[Row]) -> list[str]:
        return ["gguf", "quantized", "llama.cpp"]

    def card_engine(self, rows: list[Row]) -> str:
        return f"llama.cpp (llama-cpp-python) {rows[0].report.versions.get('llama-cpp-python', '')}".strip()

    def card_provided(self, c: CardInputs) -> str:
        return card.provided(c)

    def card_download(self, c: CardInputs) -> str:
        return card.download(c)

    def card_usage(self, c: CardInputs) -> str:
        return card.usage(c)
