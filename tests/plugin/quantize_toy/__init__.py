"""`format: toy`: the base model's weights cast to float16, as a format package outside quantize/ would write it.

It implements only the core of `quantize.formats.base.Format`; calibration, plan wording,
card sections and publish targets come from the defaults.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from quantize.config import Strict
from quantize.formats.base import BuildJob, EngineResult, Format, Needs
from quantize.formats.clients import Support
from quantize.scoring import HFScorer


class ToySpec(Strict):
    format: Literal["toy"]
    default: bool = False


class Toy(Format):
    name = "toy"
    title = "Toy"
    spec_type = ToySpec
    engine_packages = ("torch", "transformers")

    def names(self, spec: ToySpec) -> tuple[str, str]:
        return "toy-fp16", "toy-fp16"

    def predict_bytes(self, planner, spec: ToySpec) -> int:
        return planner.fp16_bytes

    def stage_needs(self, planner, variant) -> dict[str, Needs]:
        size = planner.fp16_bytes
        return {"cast": Needs(ram=2 * size, disk_out=size), "check": planner.check_needs(size)}

    def build(self, job: BuildJob) -> EngineResult:
        import torch
        from transformers import AutoModelForCausalLM

        with job.stages.stage("cast"):
            model = AutoModelForCausalLM.from_pretrained(job.base.path, dtype=torch.float16)
            model.save_pretrained(job.out)
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
                if (Path(job.base.path) / name).is_file():
                    shutil.copy(Path(job.base.path) / name, job.out / name)
        return EngineResult(device="cpu", dtype="float16")

    def load(self, folder: Path, variant, n_ctx: int, base_config: dict) -> HFScorer:
        import torch

        return HFScorer(folder, "cpu", dtype=torch.float32)

    def support(self, spec: ToySpec) -> list[Support]:
        return [Support("transformers", True, "the toy test's transformers")]

    def runner(self, spec: ToySpec) -> str:
        return "cpu"
