"""Running gptqmodel (GPTQ and AWQ): one place for its setup, its traps and its leftovers.

Format modules (gptq.py, awq.py) say what to quantize and which configs to publish; this
module loads the model, feeds it the cached calibration windows, saves, and cleans the
folder: tokenizer files present, float tensors in float16 (what GPTQ/AWQ readers
expect), gptqmodel's loss log moved into the report, no local paths.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .basemodel import TOKENIZER_FILES
from .errors import EngineError
from .outputs import assert_no_local_paths, write_json

log = logging.getLogger(__name__)


@dataclass
class EngineResult:
    device: str
    dtype: str
    module_losses: list[dict] = field(default_factory=list)


def prepare_engine_env() -> None:
    """gptqmodel 7.7 fails at load on small machines unless its CPU pool size is given."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
    os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")


def compute_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def run_gptqmodel(base_path: Path, qconfig: dict[str, Any], input_ids: np.ndarray, out: Path) -> EngineResult:
    """Quantize `base_path` with a gptqmodel QuantizeConfig built from `qconfig`, saving into `out`."""
    prepare_engine_env()
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig

    device = compute_device()
    # CPUs run float16 several times slower than bfloat16; the saved tensors are cast to
    # float16 afterwards either way, so the device does not change what is published.
    dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16
    # gptqmodel offloads to disk and writes logs/ under the working directory: keep both
    # inside the staged folder (removed with it if the build dies), never in the user's cwd.
    out = Path(out).resolve()
    workdir = out / ".engine"
    (workdir / "offload").mkdir(parents=True)
    try:
        config = QuantizeConfig(**qconfig, device=device, offload_to_disk_path=str(workdir / "offload"))
        log.info("gptqmodel: loading %s on %s (%s)", base_path, device, str(dtype).removeprefix("torch."))
        samples = [
            {"input_ids": torch.from_numpy(row).unsqueeze(0), "attention_mask": torch.ones(1, row.shape[0], dtype=torch.long)}
            for row in input_ids
        ]
        with contextlib.chdir(workdir):
            model = GPTQModel.load(str(Path(base_path).resolve()), config, dtype=dtype)
            log.info("gptqmodel: %s %d-bit, %d samples x %d tokens", qconfig.get("method", "gptq"),
                     qconfig["bits"], *input_ids.shape)
            try:
                model.quantize(samples, batch_size=1)
            except (ValueError, RuntimeError) as err:
                raise EngineError(f"gptqmodel failed: {str(err).splitlines()[0]}") from err
            model.save(str(out), max_shard_size=None)
        del model
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _copy_tokenizer(base_path, out)
    _cast_to_float16(out)
    return EngineResult(device=device, dtype="float16", module_losses=_take_loss_log(out))


def publish_configs(out: Path, quantization_config: dict, extra_files: dict[str, dict], drop: tuple[str, ...] = ()) -> None:
    """Replace gptqmodel's configs by the published ones, then refuse any local path left."""
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = quantization_config
    config.pop("_name_or_path", None)
    write_json(out / "config.json", config)
    for name in drop:
        (out / name).unlink(missing_ok=True)
    for name, value in extra_files.items():
        write_json(out / name, value)
    assert_no_local_paths(out)


def written_quantize_config(out: Path) -> dict:
    return json.loads((out / "quantize_config.json").read_text())


def _copy_tokenizer(base_path: Path, out: Path) -> None:
    for name in TOKENIZER_FILES:
        if (Path(base_path) / name).is_file() and not (out / name).exists():
            shutil.copy2(Path(base_path) / name, out / name)


def _cast_to_float16(out: Path) -> None:
    """Unquantized tensors (embeddings, norms, lm_head) and scales as float16, as readers expect."""
    import torch
    from safetensors.torch import load_file, save_file

    for file in sorted(out.glob("*.safetensors")):
        tensors = load_file(file)
        changed = False
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and tensor.dtype != torch.float16:
                cast = tensor.to(torch.float16)
                if not torch.isfinite(cast).all():
                    raise EngineError(f"{file.name}: {name} overflows float16; this model cannot be published in float16")
                tensors[name], changed = cast, True
        if changed:
            save_file(tensors, file, metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "float16"
    config.pop("torch_dtype", None)
    write_json(out / "config.json", config)


def _take_loss_log(out: Path) -> list[dict]:
    """gptqmodel's per-module loss log belongs in report.json, not on the hub branch."""
    log_file = out / "quant_log.csv"
    if not log_file.is_file():
        return []
    with open(log_file, newline="") as handle:
        rows = [dict(row) for row in csv.DictReader(handle)]
    log_file.unlink()
    return rows
