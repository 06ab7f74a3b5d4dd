"""GGUF quant types through llama.cpp (`llama_cpp.llama_model_quantize`), optionally with an imatrix.

llama.cpp decides the per-tensor types of its k-quant mixes; this module passes it the
F16 file, the file type and, when asked, an importance matrix as the C structs it reads
(name, float*, size, NULL-terminated).
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from ...errors import EngineError

log = logging.getLogger(__name__)

# File types whose tensors llama.cpp refuses to quantize without an importance matrix.
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "Q2_K_S"})

# Provenance keys llama.cpp's own quantizer (tools/quantize) writes into i1 files, read by the hub's GGUF viewer;
# written here through the same library call (its kv_overrides), with the same names and meanings.
KV_IMATRIX_FILE = "quantize.imatrix.file"
KV_IMATRIX_DATASET = "quantize.imatrix.dataset"
KV_IMATRIX_ENTRIES = "quantize.imatrix.entries_count"
KV_IMATRIX_CHUNKS = "quantize.imatrix.chunks_count"
# Ours, in the same `quantize.` namespace: what a size-budget mix was asked for and what it chose.
KV_MIX_BUDGET = "quantize.mix.budget_bytes"
KV_MIX_TYPES = "quantize.mix.type_counts"
KV_MIX_CANDIDATES = "quantize.mix.candidates"
KV_VALUE_BYTES = 127  # llama_model_kv_override holds a string in char[128]
KV_FILE_TYPE = "general.file_type"
# llama.cpp's loader, finding no file type, names a file by its most common tensor type and flags the guess
# (LLAMA_FTYPE_GUESSED); k-quant types map to their _M file types there, as here.
GUESSED_FILE_TYPE = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "IQ2_S": "IQ2_XS"}


def file_type(quant_type: str) -> int:
    member = "ALL_F32" if quant_type == "F32" else f"MOSTLY_{quant_type}"
    return int(gguf.LlamaFileType[member])


def guessed_file_type(type_counts: dict[str, int]) -> int:
    """The file type of a file no stock type describes, in llama.cpp's own terms: its most common tensor type's
    file type with the GUESSED flag, which llama.cpp prints as e.g. "Q4_K - Medium (guessed)". A tie goes to
    the first name."""
    dominant = max(sorted(type_counts), key=lambda t: type_counts[t])
    return file_type(GUESSED_FILE_TYPE.get(dominant, dominant)) | int(gguf.LlamaFileType.GUESSED)


def fit_value(text: str) -> str:
    """`text` cut to what a llama.cpp string override holds (127 bytes, whole UTF-8 characters, '...' if cut)."""
    raw = text.encode("utf-8")
    if len(raw) <= KV_VALUE_BYTES:
        return text
    return raw[: KV_VALUE_BYTES - 3].decode("utf-8", "ignore") + "..."


def kv_overrides(metadata: dict[str, str | int]) -> Any:
    """llama.cpp's metadata overrides for the quantizer to write into the output, terminated by an empty key.

    The quantizer writes each one after its own keys, as llama-quantize does for the imatrix keys: an int as
    llama.cpp stores it (uint32; callers keep large values as strings), a string of at most 127 bytes."""
    import llama_cpp

    array = (llama_cpp.llama_model_kv_override * (len(metadata) + 1))()
    for i, (key, value) in enumerate(sorted(metadata.items())):
        array[i].key = key.encode()
        slot: Any = array[i].value  # the C union (llama_cpp's stubs type it as its members' values)
        if isinstance(value, int):
            if not 0 <= value < 2**32:
                raise ValueError(f"{key}: {value} does not fit llama.cpp's uint32; write it as a string")
            array[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            slot.val_i64 = value
        else:
            encoded = value.encode("utf-8")
            if len(encoded) > KV_VALUE_BYTES:
                raise ValueError(f"{key}: {len(encoded)} bytes, llama.cpp holds {KV_VALUE_BYTES}; use fit_value")
            array[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            slot.val_str = encoded
    array[len(metadata)].key = b""
    return array


def quantize_file(
    src: Path,
    dst: Path,
    quant_type: str,
    imatrix: dict[str, np.ndarray] | None = None,
    overrides: Any = None,
    metadata: dict[str, str | int] | None = None,
) -> None:
    """Quantize the F16 GGUF `src` into `dst` as `quant_type` (e.g. "Q4_K_M"); `overrides` is a NULL-terminated
    array of llama.cpp's per-tensor type overrides (`mix`); `metadata`, keys llama.cpp writes into `dst`."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type(quant_type)
    params.nthread = os.cpu_count() or 1
    keep: list[Any] = []  # the C side only borrows these buffers
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            array = np.ascontiguousarray(values, dtype=np.float32)
            keep += [name.encode(), array]
            entries[i].name = keep[-2]
            entries[i].data = array.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = array.size
        entries[len(imatrix)].name = None
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(entries)
    if overrides is not None:
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep.append(overrides)
    if metadata:
        kv = kv_overrides(metadata)
        params.kv_overrides = ctypes.cast(kv, ctypes.POINTER(llama_cpp.llama_model_kv_override))
        keep.append(kv)
    log.info("llama.cpp: quantizing %s -> %s%s", src.name, quant_type, " with imatrix" if imatrix else "")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise EngineError(f"llama.cpp failed to quantize {src.name} to {quant_type} (code {rc})")
