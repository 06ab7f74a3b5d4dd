"""GGUF variants: one cached F16 conversion per base model, an optional cached imatrix, then llama.cpp.

The F16 file and each importance matrix are keyed by content hashes (base model;
base model + calibration tokens), so every GGUF variant of a matrix, and every later
run, shares them.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ...basemodel import ResolvedBase
from ...calibration import CalibrationSet
from ...hashing import sha256_json, short
from ...measure import Stages
from ...paths import cache_dir, compute_once, write_atomic
from ...records import TensorMix
from ..base import BuildJob, EngineResult
from . import mix
from .convert import OUTTYPES, ModelMeta, convert
from .imatrix import Imatrix, compute_imatrix, load_imatrix, save_imatrix
from .quantize import (
    KV_FILE_TYPE,
    KV_IMATRIX_CHUNKS,
    KV_IMATRIX_DATASET,
    KV_IMATRIX_ENTRIES,
    KV_IMATRIX_FILE,
    KV_MIX_BUDGET,
    KV_MIX_CANDIDATES,
    KV_MIX_TYPES,
    fit_value,
    guessed_file_type,
    quantize_file,
)
from .spec import GGUFSpec, budget_bytes, file_name, imatrix_name, tensor_types_name

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


def imatrix_key(base: ResolvedBase, calib: CalibrationSet) -> str:
    return short(sha256_json({"base": base.hash, "calibration": calib.stats.hash}))


def cached_imatrix(base: ResolvedBase, calib: CalibrationSet) -> tuple[Imatrix, Path]:
    """The importance matrix of `calib` on `base`, computed once, and its file (llama.cpp's GGUF imatrix format,
    the bytes published as the variant's `.imatrix.gguf`)."""
    key = imatrix_key(base, calib)
    path = cache_dir() / "imatrix" / f"{key}.gguf"

    def make(tmp: Path) -> None:
        log.info("imatrix: computing from %d x %d calibration tokens", *calib.input_ids.shape)
        save_imatrix(tmp, compute_imatrix(base.path, calib.input_ids), dataset_name(calib))

    if not compute_once(path, make):
        log.info("imatrix: cache hit %s", key)
    return load_imatrix(path), path


def dataset_name(calib: CalibrationSet) -> str:
    """What the matrix was measured on, as `imatrix.datasets` and `quantize.imatrix.dataset` name it."""
    return f"{calib.stats.recipe}: {calib.stats.source}"


def imatrix_metadata(published: str, matrix: Imatrix, calib: CalibrationSet) -> dict[str, str | int]:
    """The four keys llama-quantize writes into a file made with an importance matrix, meaning what they mean
    there: the matrix's file (as published beside the file), the text it was measured on (recipe and source),
    its tensor count, and its chunks (calibration windows)."""
    return {
        KV_IMATRIX_FILE: published,
        KV_IMATRIX_DATASET: fit_value(dataset_name(calib)),
        KV_IMATRIX_ENTRIES: len(matrix.sums),
        KV_IMATRIX_CHUNKS: matrix.chunk_count,
    }


def build_gguf(job: BuildJob, meta: ModelMeta) -> EngineResult:
    """The variant's one file, into the job's staged folder: converted directly (F32/BF16/Q8_0...), or
    quantized by llama.cpp from the cached F16 (and importance matrix), or mixed to a budget."""
    base, spec, calib, stages = job.base, job.variant.spec, job.calibration, job.stages
    target = job.out / file_name(meta.name, spec.label, imatrix=spec.imatrix is not None)
    if spec.quant_type in OUTTYPES and spec.quant_type != "F16":
        with stages.stage("convert"):
            convert(base.path, target, spec.quant_type, meta)
        return EngineResult(device="cpu", dtype=spec.quant_type)
    with stages.stage("convert"):
        f16 = f16_gguf(base, meta)
    if spec.quant_type == "F16":
        shutil.copyfile(f16, target)
        return EngineResult(device="cpu", dtype="F16")
    if calib is None:
        with stages.stage("quantize"):
            quantize_file(f16, target, spec.label)
        return EngineResult(device="cpu", dtype=spec.label)
    with stages.stage("imatrix"):
        matrix, matrix_file = cached_imatrix(base, calib)
    published = imatrix_name(meta.name, calib.stats.recipe, job.project.config.calibration)
    shutil.copyfile(matrix_file, job.out / published)  # published beside the file: llama-quantize --imatrix reads it
    if spec.is_mix:
        return build_mix(base, spec, f16, matrix, calib, target, stages, published)
    with stages.stage("quantize"):
        quantize_file(f16, target, spec.label, matrix.means(), metadata=imatrix_metadata(published, matrix, calib))
    return EngineResult(device="cpu", dtype=spec.label)


def cached_sensitivity(
    f16: Path, matrix: dict[str, np.ndarray], matrix_key: str, candidates: tuple[str, ...], calib: CalibrationSet
) -> tuple[list, dict[str, float], float | None]:
    """Every tensor's loss per candidate type in KLD units (measured errors, scaled by the class probes),
    computed once per F16 file, importance matrix and candidate list."""
    key = short(
        sha256_json(
            {
                "f16": f16.parent.name,
                "imatrix": matrix_key,
                "candidates": candidates,
                "rows": mix.SAMPLE_ROWS,
                "probe": [mix.PROBE_TYPE, mix.PROBE_TOKENS],
                "version": mix.MEASURE_VERSION,
            }
        )
    )
    path = cache_dir() / "mix" / f"{key}.json"
    seconds: float | None = None

    def make(tmp: Path) -> None:
        nonlocal seconds
        start = time.perf_counter()
        log.info("mix: measuring every tensor under %d candidate types (once; cached in %s)", len(candidates), path)
        measured = mix.measure(f16, matrix, tuple(dict.fromkeys((*candidates, mix.PROBE_TYPE))))
        ids = calib.input_ids
        scaled, scales = mix.probe(f16, measured, matrix, ids[: max(1, mix.PROBE_TOKENS // ids.shape[1])])
        chosen_from = [
            mix.TensorSensitivity(s.name, s.shape, tuple(o for o in s.options if o.qtype in candidates)) for s in scaled
        ]
        tmp.write_text(json.dumps(mix.to_json(chosen_from, scales)))
        seconds = round(time.perf_counter() - start, 3)

    if not compute_once(path, make):
        log.info("mix: sensitivities from the cache %s", key)
    tensors, scales = mix.from_json(json.loads(path.read_text()))
    return tensors, scales, seconds


def build_mix(
    base: ResolvedBase,
    spec: GGUFSpec,
    f16: Path,
    matrix: Imatrix,
    calib: CalibrationSet,
    target: Path,
    stages: Stages,
    published: str,
) -> EngineResult:
    """Measure (cached), choose the per-tensor types that fill the budget, and have llama.cpp write them; the
    chosen types also go beside the file as llama-quantize's `--tensor-type-file` (`tensor_types_name`)."""
    weights = matrix.means()
    with stages.stage("measure"):
        sensitivity, scales, seconds = cached_sensitivity(
            f16, weights, imatrix_key(base, calib), spec.candidates, calib
        )
    budget = budget_bytes(spec, base.config)
    types = mix.choose(sensitivity, budget - mix.fixed_bytes(f16, sensitivity))
    counts = dict(Counter(types.values()).most_common())
    log.info("mix: %s for %.3f GB", ", ".join(f"{n} x {t}" for t, n in counts.items()), budget / 1e9)
    provenance = {
        **imatrix_metadata(published, matrix, calib),
        KV_MIX_BUDGET: str(budget),  # a 7B budget passes uint32's 4.29e9
        KV_MIX_TYPES: fit_value(", ".join(f"{n} {t}" for t, n in counts.items())),
        KV_MIX_CANDIDATES: fit_value(",".join(spec.candidates)),
        KV_FILE_TYPE: guessed_file_type(counts),  # not the Q4_K_M llama.cpp was called with: no stock type fits
    }
    with stages.stage("quantize"):
        mix.quantize_mix(f16, target, types, weights, metadata=provenance)
    write_atomic(target.with_name(tensor_types_name(target.name)), mix.tensor_type_lines(types).encode())
    record = TensorMix(
        budget_bytes=budget,
        candidates=list(spec.candidates),
        tensor_types=types,
        type_counts=counts,
        predicted_kld=float(f"{mix.predicted_error(sensitivity, types):.4g}"),
        kld_per_error={k: float(f"{v:.4g}") for k, v in scales.items()},
        measure_seconds=seconds,
    )
    return EngineResult(device="cpu", dtype=spec.label, mix=record)
