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


def file_type(quant_type: str) -> int:
    member = "ALL_F32" if quant_type == "F32" else f"MOSTLY_{quant_type}"
    return int(gguf.LlamaFileType[member])


def quantize_file(
    src: Path, dst: Path, quant_type: str, imatrix: dict[str, np.ndarray] | None = None, overrides: Any = None
) -> None:
    """Quantize the F16 GGUF `src` into `dst` as `quant_type` (e.g. "Q4_K_M"); `overrides` is a NULL-terminated
    array of llama.cpp's per-tensor type overrides (`mix`)."""
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
    log.info("llama.cpp: quantizing %s -> %s%s", src.name, quant_type, " with imatrix" if imatrix else "")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise EngineError(f"llama.cpp failed to quantize {src.name} to {quant_type} (code {rc})")
