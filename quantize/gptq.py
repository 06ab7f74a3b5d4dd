"""GPTQ, written as the GPTQ v1 checkpoint every GPTQ reader loads.

gptqmodel quantizes and packs; this module configures it and publishes the AutoGPTQ
key set as `quantize_config.json`, identical to `config.json`'s `quantization_config`,
without the metadata (and temporary paths) gptqmodel 7.7 records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import GPTQSpec
from .engine import EngineResult, publish_configs, run_gptqmodel, written_quantize_config
from .errors import EngineError


def autogptq_config(spec: GPTQSpec) -> dict:
    """The key set AutoGPTQ-made repos publish (DESIGN.md section 4), in their order."""
    return {
        "bits": spec.bits,
        "group_size": spec.group_size,
        "damp_percent": spec.damp_percent,
        "desc_act": spec.desc_act,
        "static_groups": spec.static_groups,
        "sym": spec.sym,
        "true_sequential": spec.true_sequential,
        "model_name_or_path": None,
        "model_file_base_name": "model",
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
    }


def quantize_gptq(base_path: Path, spec: GPTQSpec, input_ids: np.ndarray, out: Path) -> EngineResult:
    result = run_gptqmodel(base_path, {
        "bits": spec.bits,
        "group_size": spec.group_size,
        "desc_act": spec.desc_act,
        "act_group_aware": False,  # gptqmodel's own reordering; off so desc_act means what AutoGPTQ meant
        "damp_percent": spec.damp_percent,
        "sym": spec.sym,
        "true_sequential": spec.true_sequential,
        "static_groups": spec.static_groups,
    }, input_ids, out)
    written = written_quantize_config(out)
    if written.get("checkpoint_format") != "gptq" or written.get("bits") != spec.bits:
        raise EngineError(f"gptqmodel wrote {written.get('checkpoint_format')} {written.get('bits')}-bit, expected gptq v1 {spec.bits}-bit")
    config = autogptq_config(spec)
    publish_configs(out, config, {"quantize_config.json": config})
    return result
