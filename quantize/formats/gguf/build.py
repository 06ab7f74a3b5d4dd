"""GGUF variants: one cached F16 conversion per base model, an optional cached imatrix, then llama.cpp.

The F16 file and each importance matrix are keyed by content hashes (base model;
base model + calibration tokens), so every GGUF variant of a matrix, and every later
run, shares them.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ...basemodel import ResolvedBase
from ...calibration import CalibrationSet
from ...hashing import sha256_json, short
from ...measure import Stages
from ...paths import cache_dir, compute_once
from ..base import EngineResult
from . import GGUFSpec, file_name
from .convert import OUTTYPES, ModelMeta, convert
from .imatrix import compute_imatrix, load_imatrix, save_imatrix
from .quantize import quantize_file

log = logging.getLogger(__name__)

CONVERTER_VERSION = 1  # bump when gguf_convert writes different bytes for the same input


def f16_gguf(base: ResolvedBase, meta: ModelMeta) -> Path:
    """The base model as an F16 GGUF, converted once and cached."""
    key = short(sha256_json({"base": base.hash, "meta": meta.__dict__, "converter": CONVERTER_VERSION}))
    path = cache_dir() / "gguf" / key / file_name(meta.name, "F16")

    def make(tmp: Path) -> None:
        log.info("converting %s to F16 GGUF (once; cached in %s)", meta.name, path.parent)
        convert(base.path, tmp, "F16", meta)

    compute_once(path, make)
    return path


def cached_imatrix(base: ResolvedBase, calib: CalibrationSet) -> dict:
    key = short(sha256_json({"base": base.hash, "calibration": calib.stats.hash}))
    path = cache_dir() / "imatrix" / f"{key}.npz"

    def make(tmp: Path) -> None:
        log.info("imatrix: computing from %d x %d calibration tokens", *calib.input_ids.shape)
        save_imatrix(tmp, compute_imatrix(base.path, calib.input_ids))

    if not compute_once(path, make):
        log.info("imatrix: cache hit %s", key)
    return load_imatrix(path)


def build_gguf(
    base: ResolvedBase, meta: ModelMeta, spec: GGUFSpec, calib: CalibrationSet | None, out: Path, stages: Stages
) -> EngineResult:
    target = out / file_name(meta.name, spec.quant_type, imatrix=spec.imatrix is not None)
    if spec.quant_type in OUTTYPES and spec.quant_type != "F16":
        with stages.stage("convert"):
            convert(base.path, target, spec.quant_type, meta)
        return EngineResult(device="cpu", dtype=spec.quant_type)
    with stages.stage("convert"):
        f16 = f16_gguf(base, meta)
    if spec.quant_type == "F16":
        shutil.copyfile(f16, target)
        return EngineResult(device="cpu", dtype="F16")
    matrix = None
    if calib is not None:
        with stages.stage("imatrix"):
            matrix = cached_imatrix(base, calib)
    with stages.stage("quantize"):
        quantize_file(f16, target, spec.quant_type, matrix)
    return EngineResult(device="cpu", dtype=spec.quant_type)
