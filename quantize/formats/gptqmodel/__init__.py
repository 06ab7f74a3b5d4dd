"""Weight-only formats made by gptqmodel (GPTQ, AWQ): the engine run, and what the two formats share.

`GPTQModelFormat` holds what GPTQ and AWQ have in common (safetensors on a branch per
variant, calibration tokens, loading through transformers, the card's parameter table and
usage); gptq.py and awq.py say what to quantize and which configs to publish. The engine
run loads the model, feeds it the cached calibration windows, saves, and cleans the
folder: tokenizer files present, float tensors in float16 (what GPTQ/AWQ readers
expect), gptqmodel's loss log moved into the report, no local paths.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field, field_validator

from ...config import SafeName, Strict
from ...devices import compute_device
from ...records import package_versions
from ...scoring import HFScorer
from ...shapes import check_group_size
from ..autoround import PACKAGE as AUTOROUND
from ..autoround import autoround_needs
from ..base import BuildJob, EngineResult, Format, Needs, PlanWork
from ..sections import CardInputs, Row
from . import card
from .engine import prepare_engine_env, run_gptqmodel

__all__ = ["EngineResult", "GPTQModelFormat", "QuantizedSpec", "prepare_engine_env", "run_gptqmodel"]

log = logging.getLogger(__name__)

# The dtypes gptqmodel may compute in on a CPU, with their bytes per activation value.
DTYPE_WIDTHS = (("bfloat16", 2), ("float32", 4))


def _is_group_size(value: int) -> bool:
    return value == -1 or (value >= 2 and value & (value - 1) == 0)


class QuantizedSpec(Strict):
    """Fields every calibrated weight-only variant shares."""

    group_size: int = 128
    calibration: SafeName | None = Field(None, description="recipe name in calibration/; defaults to the top-level one")
    seq_len: int | None = Field(None, gt=0, description="overrides the recipe's sequence length")
    samples: int | None = Field(None, gt=0, description="overrides the recipe's number of samples")
    default: bool = False

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, value: int) -> int:
        if not _is_group_size(value):
            raise ValueError(f"group_size {value} is not -1 or a positive power of two")
        return value


class GPTQModelFormat(Format):
    """GPTQ and AWQ: calibrated, weight-only, safetensors on a branch per variant, read by transformers and servers."""

    engine_packages: ClassVar[tuple[str, ...]] = ("gptqmodel", "torch", "transformers")
    recorded_packages: ClassVar[tuple[str, ...]] = (AUTOROUND,)  # AutoRound variants; the card names it
    field_fixes: ClassVar[dict[str, str]] = {
        "bits": "GPTQ takes 4 or 8, AWQ takes 4",
        "group_size": "use -1 (no grouping) or 32, 64 or 128",
        "damp_percent": "use a fraction such as 0.1 (0.01 is AutoGPTQ's default)",
    }
    config_files: ClassVar[str]  # the card's compatibility line: which files carry the parameters
    # Whether gptqmodel's solver for this format runs in float32 (GPTQ does; its AWQ refuses anything but 16-bit).
    float32_compute: ClassVar[bool] = True

    @abstractmethod
    def quantize(
        self, base_path: Path, spec, input_ids: np.ndarray, out: Path, dtype: str | None = None
    ) -> EngineResult: ...

    def validate(self, spec, config: dict, config_file: Path, where: str, name: str) -> None:
        check_group_size(config, spec.group_size, where, name)

    def plan_work(self, planner, variant) -> PlanWork:
        recipe = planner.recipe(variant.calibration)
        seq_len = variant.spec.seq_len or recipe.seq_len
        samples = variant.spec.samples or recipe.samples
        work = f"{samples} x {seq_len} tokens of {variant.calibration}"
        tuned = variant.spec.autoround
        if tuned:
            work = f"AutoRound, {tuned.iters} steps per block, on {work}"
        return PlanWork("model.safetensors", work, seq_len)

    def stage_needs(self, planner, variant) -> dict[str, Needs]:
        """gptqmodel offloads the model to disk (run_gptqmodel gives it a folder) and brings in one layer at a
        time, with every calibration sample's hidden states for it (twice: inputs and outputs, in the engine's dtype:
        16-bit, or float32 on a CPU without bfloat16, engine_dtype); at the
        end it holds the packed model to save it. On a CPU at 7B (bench/full7b.py): 4.4 GB through the layers,
        6.8 GB at the end (4.2 GB file). Loading it for the check on a CPU converts v1 to v2 and repacks for the
        AVX-512 kernel: 10.9 GB for the 4.2 GB file. On a GPU the host side is not measured yet: the whole
        16-bit model is assumed."""
        tokens = self._tokens(planner, variant)
        size = self.predict_bytes(planner, variant.spec) or 0
        check = planner.check_needs(size if planner.gpu else int(2.5 * size))
        if variant.spec.autoround:
            return {"quantize": autoround_needs(planner, tokens, size, self.name), "check": check}
        if planner.gpu:
            acts = self._acts(planner, variant.spec, tokens, 2)
            quantize = Needs(ram=planner.fp16_bytes, vram=planner.layer_bytes(2) + acts, disk_out=size)
        else:
            quantize = Needs(ram=self._cpu_quantize(planner, variant, tokens, size)[1], disk_out=size)
        return {"quantize": quantize, "check": check}

    def engine_dtype(self, planner, variant) -> str | None:
        """The dtype gptqmodel computes in: on a CPU the one _cpu_quantize chose for the plan; None (the engine's
        float16) on a GPU and for AutoRound, which picks its own."""
        if planner.gpu or variant.spec.autoround:
            return None
        size = self.predict_bytes(planner, variant.spec) or 0
        return self._cpu_quantize(planner, variant, self._tokens(planner, variant), size)[0]

    def _cpu_quantize(self, planner, variant, tokens: int, size: int) -> tuple[str, int]:
        """On a CPU: the dtype by the planner's one rule (cpu_dtype) from the stage's peaks in bfloat16 and in
        float32, and the chosen one's peak; bfloat16 where the engine takes nothing wider."""
        peaks = {dtype: self._cpu_ram(planner, variant.spec, tokens, size, width) for dtype, width in DTYPE_WIDTHS}
        dtype = planner.cpu_dtype(peaks["bfloat16"], peaks["float32"]) if self.float32_compute else "bfloat16"
        return dtype, peaks[dtype]

    def _tokens(self, planner, variant) -> int:
        samples = variant.spec.samples or planner.recipe(variant.calibration).samples
        return samples * self.plan_work(planner, variant).seq_len

    def _acts(self, planner, spec, tokens: int, width: int) -> int:
        """Every calibration token's hidden state into and out of the layer being solved, at `width` bytes."""
        return 2 * width * tokens * planner.config["hidden_size"] + self.extra_acts(planner, spec, tokens)

    def _cpu_ram(self, planner, spec, tokens: int, size: int, width: int) -> int:
        """gptqmodel on a CPU: a few float32 layers, the float32 head and the activations while it solves, then
        the packed file beside the head at the end."""
        head = 2 * planner.config["vocab_size"] * planner.config["hidden_size"] * 4
        layers = 3 * planner.layer_bytes(4) + head + self._acts(planner, spec, tokens, width)
        return max(layers, size + head + planner.layer_bytes(4))

    def extra_acts(self, planner, spec, tokens: int) -> int:
        """Activation memory a recipe option adds for the `tokens` calibration tokens (none by default)."""
        return 0

    def build(self, job: BuildJob) -> EngineResult:
        assert job.calibration is not None  # `calibration` names a recipe for every GPTQ/AWQ variant
        with job.stages.stage("quantize"):
            dtype = self.engine_dtype(job.planner, job.variant)
            return self.quantize(job.base.path, job.variant.spec, job.calibration.input_ids, job.out, dtype)

    def load_kwargs(self, spec, base_config: dict, device: str) -> dict:
        """Extra `from_pretrained` arguments a layout needs on this device."""
        return {}

    def load(self, folder: Path, variant, n_ctx: int, base_config: dict):
        import torch

        device = compute_device()
        # float16 matmuls are ~40x slower than bfloat16 on a CPU (38 s vs 0.8 s for a 512-token forward of 4-bit
        # SmolLM2): checks on a CPU compute in bfloat16, GPUs in the file's float16.
        dtype = torch.bfloat16 if device == "cpu" else None
        return HFScorer(folder, device, dtype=dtype, **self.load_kwargs(variant.spec, base_config, device))

    # -- card -------------------------------------------------------------------------------------------------------
    def card_tags(self, rows: list[Row]) -> list[str]:
        return [self.name, "quantized", f"{min(r.variant.spec.bits for r in rows)}-bit"]

    def engine_inputs(self, spec) -> dict[str, str]:
        """An AutoRound variant's bytes also depend on auto-round's version."""
        return {AUTOROUND: package_versions([AUTOROUND]).get(AUTOROUND, "?")} if spec.autoround else {}

    def card_engine(self, rows: list[Row]) -> str:
        """gptqmodel, auto-round, or both, as the variants on this card were made."""
        made = []
        for tuned, package in ((False, "gptqmodel"), (True, AUTOROUND)):
            used = [r for r in rows if bool(r.variant.spec.autoround) is tuned]
            if used:
                made.append(f"{package} {used[0].report.versions.get(package, '')}".strip())
        return " and ".join(made)

    @abstractmethod
    def card_row(self, r: Row) -> tuple[str, str, str]:
        """(Act Order, Damp %, Desc) cells of a variant's row."""

    def card_provided(self, c: CardInputs) -> str:
        return card.provided(self, c)

    def card_download(self, c: CardInputs) -> str:
        return card.download(c)

    def card_usage(self, c: CardInputs) -> str:
        return card.usage(self, c)
