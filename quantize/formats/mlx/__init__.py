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

from pathlib import Path

from ...shapes import check_group_size
from ..base import DEFAULT_RUN_SEQ_LEN, BuildJob, EngineResult, Format, Needs, PlanWork
from ..clients import MLX_LM, Support
from ..sections import CardInputs, Row
from . import card
from .engine import MLXScorer, check_architecture, convert, finish
from .spec import MLXSpec, dtype_of, mlx_name, predict_bytes

__all__ = ["MLX", "MLXScorer", "MLXSpec", "mlx_name", "predict_bytes"]


class MLX(Format):
    name = "mlx"
    title = "MLX"
    spec_type = MLXSpec
    engine_packages = ("mlx", "mlx-lm")
    family_line = "MLX models for Apple silicon (mlx-lm)"
    family_rank = 3
    plot_marker = "D"
    library_name = "mlx"

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
        return PlanWork(
            "model.safetensors", "mlx-lm conversion (round to nearest, no calibration)", DEFAULT_RUN_SEQ_LEN
        )

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
        return EngineResult(device="cpu", dtype=dtype_of(job.base.config))

    def load(self, folder: Path, variant, n_ctx: int, base_config: dict) -> MLXScorer:
        return MLXScorer(folder)

    # -- card -------------------------------------------------------------------------------------------------------
    def card_tags(self, rows: list[Row]) -> list[str]:
        return ["mlx", "quantized", "mlx-lm"]

    def card_engine(self, rows: list[Row]) -> str:
        versions = rows[0].report.versions
        return f"mlx-lm {versions.get('mlx-lm', '(unrecorded)')} (mlx {versions.get('mlx', '(unrecorded)')})"

    def card_provided(self, c: CardInputs) -> str:
        return card.provided(c, self.clients)

    def card_usage(self, c: CardInputs) -> str:
        return card.usage(c, self.support(c.rows[0].variant.spec))
