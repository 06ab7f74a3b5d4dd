"""AWQ through gptqmodel, in the GEMM layout and configs AutoAWQ-era clients and transformers read.

gptqmodel's AWQ defaults differ from what those clients expect (zero point off, bf16
scales): zero point is configured on here, tensors are cast to float16 by the engine,
and what was written is checked before it is published.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import AWQSpec
from .engine import EngineResult, publish_configs, run_gptqmodel, written_quantize_config
from .errors import EngineError


def awq_configs(spec: AWQSpec) -> tuple[dict, dict]:
    """(`config.json` quantization_config, `quant_config.json`), as TheBloke's AWQ repos have them."""
    hf = {"quant_method": "awq", "zero_point": spec.zero_point, "group_size": spec.group_size,
          "bits": spec.bits, "version": spec.version}
    autoawq = {"zero_point": spec.zero_point, "q_group_size": spec.group_size, "w_bit": spec.bits,
               "version": spec.version.upper()}
    return hf, autoawq


def quantize_awq(base_path: Path, spec: AWQSpec, input_ids: np.ndarray, out: Path) -> EngineResult:
    result = run_gptqmodel(base_path, {
        "method": "awq",
        "format": spec.version,
        "bits": spec.bits,
        "group_size": spec.group_size,
        "sym": not spec.zero_point,  # gptqmodel writes zero_point = not sym
    }, input_ids, out)
    written = written_quantize_config(out)
    if written.get("quant_method") != "awq" or written.get("zero_point") != spec.zero_point or \
            str(written.get("version", "")).lower() != spec.version:
        raise EngineError(f"gptqmodel wrote awq={written.get('quant_method')} zero_point={written.get('zero_point')} "
                          f"version={written.get('version')}, expected zero_point={spec.zero_point} {spec.version}")
    hf, autoawq = awq_configs(spec)
    publish_configs(out, hf, {"quant_config.json": autoawq}, drop=("quantize_config.json",))
    return result
