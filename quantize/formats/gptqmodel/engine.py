"""gptqmodel's run: load the model, feed it the cached calibration windows, save, and finish the folder."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ...devices import compute_device
from ...errors import EngineError
from ..base import EngineResult
from ..weightfolder import finish_folder

log = logging.getLogger(__name__)


def prepare_engine_env() -> None:
    """gptqmodel 7.7 fails at load on small machines unless its CPU pool size is given."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
    os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")


def run_gptqmodel(
    base_path: Path, qconfig: dict[str, Any], input_ids: np.ndarray, out: Path, dtype: str | None = None
) -> EngineResult:
    """Quantize `base_path` with a gptqmodel QuantizeConfig built from `qconfig`, saving into `out`, computing in
    `dtype` (the format's engine_dtype: float32 or bfloat16 on a CPU; None: float16 on a GPU, bfloat16 on a CPU)."""
    prepare_engine_env()
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig

    device = compute_device()
    # CPUs run float16 several times slower than bfloat16; the saved tensors are cast to
    # float16 afterwards either way, so the device does not change what is published.
    torch_dtype = getattr(torch, dtype) if dtype else torch.float16 if device.startswith("cuda") else torch.bfloat16
    # gptqmodel offloads to disk and writes logs/ under the working directory: keep both
    # inside the staged folder (removed with it if the build dies), never in the user's cwd.
    out = Path(out).resolve()
    workdir = out / ".engine"
    (workdir / "offload").mkdir(parents=True)
    try:
        config = QuantizeConfig(**qconfig, device=device, offload_to_disk_path=str(workdir / "offload"))
        log.info("gptqmodel: loading %s on %s (%s)", base_path, device, str(torch_dtype).removeprefix("torch."))
        samples = [
            {
                "input_ids": torch.from_numpy(row).unsqueeze(0),
                "attention_mask": torch.ones(1, row.shape[0], dtype=torch.long),
            }
            for row in input_ids
        ]
        with contextlib.chdir(workdir):
            model = GPTQModel.load(str(Path(base_path).resolve()), config, dtype=torch_dtype)
            log.info(
                "gptqmodel: %s %d-bit, %d samples x %d tokens",
                qconfig.get("method", "gptq"),
                qconfig["bits"],
                *input_ids.shape,
            )
            try:
                model.quantize(samples, batch_size=1)
            except (ValueError, RuntimeError) as err:
                raise EngineError(f"gptqmodel failed: {str(err).splitlines()[0]}") from err
            model.save(str(out), max_shard_size=None)
        del model
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    finish_folder(base_path, out)
    computed = str(torch_dtype).removeprefix("torch.")
    return EngineResult(device=device, dtype="float16", compute_dtype=computed, module_losses=_take_loss_log(out))


def _take_loss_log(out: Path) -> list[dict]:
    """gptqmodel's per-module loss log belongs in report.json, not on the hub branch."""
    log_file = out / "quant_log.csv"
    if not log_file.is_file():
        return []
    with open(log_file, newline="") as handle:
        rows = [dict(row) for row in csv.DictReader(handle)]
    log_file.unlink()
    return rows
