"""AWQ through gptqmodel, in the GEMM layout and configs AutoAWQ-era clients and transformers read.

gptqmodel's AWQ defaults differ from what those clients expect (zero point off, bf16
scales): zero point is configured on here, tensors are cast to float16 by the engine,
and what was written is checked before it is published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from ..errors import EngineError
from ..sizes import model_tensors, safetensors_bytes
from .autoround import AutoRoundSpec, autoround_description, run_autoround
from .clients import TRANSFORMERS, VLLM_CPU, VLLM_CPU_4BIT, Support
from .gptqmodel import EngineResult, GPTQModelFormat, QuantizedSpec, run_gptqmodel
from .sections import Row
from .weightfolder import engine_config, publish_configs, written_quantize_config


class AWQSpec(QuantizedSpec):
    format: Literal["awq"]
    bits: Literal[4] = 4
    zero_point: bool = True
    version: Literal["gemm"] = "gemm"
    autoround: AutoRoundSpec | None = Field(
        None, description="tune with AutoRound instead of gptqmodel's AWQ (formats/autoround.py); same file layout"
    )

    @field_validator("group_size")
    @classmethod
    def _awq_grouped(cls, value: int) -> int:
        if value == -1:
            raise ValueError("AWQ needs a group size; -1 is GPTQ only")
        return value


def awq_configs(spec: AWQSpec) -> tuple[dict, dict]:
    """(`config.json` quantization_config, `quant_config.json`), as TheBloke's AWQ repos have them."""
    hf = {
        "quant_method": "awq",
        "zero_point": spec.zero_point,
        "group_size": spec.group_size,
        "bits": spec.bits,
        "version": spec.version,
    }
    autoawq = {
        "zero_point": spec.zero_point,
        "q_group_size": spec.group_size,
        "w_bit": spec.bits,
        "version": spec.version.upper(),
    }
    return hf, autoawq


def predict_bytes(config: dict, spec: AWQSpec) -> int:
    """GEMM layout: qweight and qzeros packed along the output dim, fp16 scales; everything else in fp16."""
    entries = []
    pack = 32 // spec.bits
    for t in model_tensors(config):
        if not t.is_linear:
            entries.append((t.name, "F16", t.shape, t.numel * 2))
            continue
        out_f, in_f = t.shape
        groups = in_f // spec.group_size
        stem = t.name.removesuffix(".weight")
        entries += [
            (f"{stem}.qweight", "I32", (in_f, out_f // pack), in_f * out_f // pack * 4),
            (f"{stem}.qzeros", "I32", (groups, out_f // pack), groups * out_f // pack * 4),
            (f"{stem}.scales", "F16", (groups, out_f), groups * out_f * 2),
        ]
    return safetensors_bytes(entries)


def quantize_awq(
    base_path: Path, spec: AWQSpec, input_ids: np.ndarray, out: Path, dtype: str | None = None
) -> EngineResult:
    if spec.autoround:
        result = run_autoround(
            base_path, spec.autoround, spec.bits, spec.group_size, not spec.zero_point, "awq", input_ids, out
        )
        return _publish(out, spec, result, engine_config(out), "auto-round")
    result = run_gptqmodel(
        base_path,
        {
            "method": "awq",
            "format": spec.version,
            "bits": spec.bits,
            "group_size": spec.group_size,
            "sym": not spec.zero_point,  # gptqmodel writes zero_point = not sym
        },
        input_ids,
        out,
        dtype,
    )
    return _publish(out, spec, result, written_quantize_config(out), "gptqmodel")


def _publish(out: Path, spec: AWQSpec, result: EngineResult, written: dict, engine: str) -> EngineResult:
    """Check what the engine wrote is the layout asked for, then put the published configs over its own."""
    if (
        written.get("quant_method") != "awq"
        or written.get("zero_point") != spec.zero_point
        or str(written.get("version", "")).lower() != spec.version
    ):
        raise EngineError(
            f"{engine} wrote awq={written.get('quant_method')} zero_point={written.get('zero_point')} "
            f"version={written.get('version')}, expected zero_point={spec.zero_point} {spec.version}"
        )
    hf, autoawq = awq_configs(spec)
    publish_configs(out, hf, {"quant_config.json": autoawq}, drop=("quantize_config.json",))
    return result


class AWQ(GPTQModelFormat):
    name = "awq"
    title = "AWQ"
    spec_type = AWQSpec
    family_line = "AWQ model(s) for GPU inference"
    family_rank = 0
    plot_marker = "s"
    config_files = "`quant_config.json` and `config.json` carry the same parameters (GEMM, zero point)."
    float32_compute = False  # gptqmodel's AwqTorchLinear takes float16/bfloat16 only

    def names(self, spec: AWQSpec) -> tuple[str, str]:
        name = f"awq-{spec.bits}bit-{spec.group_size}g" + ("-autoround" if spec.autoround else "")
        return name, name

    def predict_bytes(self, planner, spec: AWQSpec) -> int:
        return predict_bytes(planner.config, spec)

    def support(self, spec: AWQSpec) -> list[Support]:
        return [
            Support("transformers", True, TRANSFORMERS),
            Support("vLLM", True, VLLM_CPU, VLLM_CPU_4BIT),
            Support("TGI", None, "untested", ""),
        ]

    def quantize(
        self, base_path: Path, spec: AWQSpec, input_ids: np.ndarray, out: Path, dtype: str | None = None
    ) -> EngineResult:
        return quantize_awq(base_path, spec, input_ids, out, dtype)

    def card_row(self, r: Row) -> tuple[str, str, str]:
        spec = r.variant.spec
        tuned = f"; {autoround_description(spec.autoround)}" if spec.autoround else ""
        return "-", "-", f"AWQ {spec.bits}-bit, group size {spec.group_size}, zero point, GEMM{tuned}."
