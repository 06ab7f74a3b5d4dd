"""GPTQ through gptqmodel, written as the GPTQ v1 checkpoint every GPTQ reader loads.

gptqmodel does the quantization and packing; this module only configures it, hands it
the cached calibration windows, and rewrites its configs into the AutoGPTQ key set
(`quantize_config.json` and `config.json` -> `quantization_config`, identical) without
the temporary paths gptqmodel 7.7 records.
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

import numpy as np

from .basemodel import TOKENIZER_FILES
from .config import GPTQSpec
from .errors import EngineError
from .outputs import assert_no_local_paths, write_json

log = logging.getLogger(__name__)


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


def prepare_engine_env() -> None:
    """gptqmodel 7.7 fails at load on small machines unless its CPU pool size is given."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
    os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")


def compute_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


@dataclass
class EngineResult:
    device: str
    dtype: str
    module_losses: list[dict] = field(default_factory=list)


def quantize_gptq(base_path: Path, spec: GPTQSpec, input_ids: np.ndarray, out: Path) -> EngineResult:
    prepare_engine_env()
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig

    device = compute_device()
    # fp16 is what GPTQ readers expect for unquantized tensors, but CPUs run it several
    # times slower than bf16; gptqmodel writes scales as fp16 either way.
    dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16
    # gptqmodel offloads to disk and writes logs/ under the working directory: keep both
    # inside the staged folder (removed with it if the build dies), never in the user's cwd.
    out = out.resolve()
    workdir = out / ".engine"
    offload = workdir / "offload"
    offload.mkdir(parents=True)
    try:
        qconfig = QuantizeConfig(
            bits=spec.bits,
            group_size=spec.group_size,
            desc_act=spec.desc_act,
            act_group_aware=False,
            damp_percent=spec.damp_percent,
            sym=spec.sym,
            true_sequential=spec.true_sequential,
            static_groups=spec.static_groups,
            device=device,
            offload_to_disk_path=str(offload),
        )
        log.info("gptqmodel: loading %s on %s", base_path, device)
        with contextlib.chdir(workdir):
            model = GPTQModel.load(str(Path(base_path).resolve()), qconfig, dtype=dtype)
        samples = [
            {"input_ids": torch.from_numpy(row).unsqueeze(0), "attention_mask": torch.ones(1, row.shape[0], dtype=torch.long)}
            for row in input_ids
        ]
        log.info("gptqmodel: quantizing %d layers with %d x %d tokens", model.model.config.num_hidden_layers, *input_ids.shape)
        try:
            with contextlib.chdir(workdir):
                model.quantize(samples, batch_size=1)
                model.save(str(out), max_shard_size=None)
        except (ValueError, RuntimeError) as err:
            raise EngineError(f"gptqmodel failed: {str(err).splitlines()[0]}") from err
        del model
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return EngineResult(device=device, dtype=str(dtype).removeprefix("torch."), module_losses=_finalize(base_path, spec, out))


def _finalize(base_path: Path, spec: GPTQSpec, out: Path) -> list[dict]:
    """Make gptqmodel's output a clean GPTQ v1 folder; return its per-module loss log."""
    written = json.loads((out / "quantize_config.json").read_text())
    if written.get("checkpoint_format", written.get("format")) != "gptq" or written.get("bits") != spec.bits:
        raise EngineError(f"gptqmodel wrote {written.get('checkpoint_format')} {written.get('bits')}-bit, expected gptq v1 {spec.bits}-bit")
    qconfig = autogptq_config(spec)
    write_json(out / "quantize_config.json", qconfig)
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = qconfig
    config.pop("_name_or_path", None)
    write_json(out / "config.json", config)
    for name in TOKENIZER_FILES:
        if (base_path / name).is_file() and not (out / name).exists():
            shutil.copy2(base_path / name, out / name)
    losses = []
    log_file = out / "quant_log.csv"
    if log_file.is_file():
        with open(log_file, newline="") as handle:
            losses = [dict(row) for row in csv.DictReader(handle)]
        log_file.unlink()
    assert_no_local_paths(out)
    return losses
