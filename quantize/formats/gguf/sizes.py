"""GGUF file sizes before any work: llama.cpp's own per-tensor choices, read from a dry run on a skeleton.

The skeleton is an F16 GGUF with the model's metadata and tensor table but no data (a
sparse file): headers only, so a 7B plan costs milliseconds and no disk.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import tempfile
from pathlib import Path

import gguf
import numpy as np

from ...errors import EngineError
from ...sizes import model_tensors
from .convert import OUTTYPES, ModelMeta, write_general, write_hparams, write_vocab
from .quantize import file_type

_TENSOR_LINE = re.compile(r"\]\s+(\S+)\s+-\s+\[.*?type =\s+(\w+),.*?(?:\((\w+)\)|$)")


def gguf_nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    """Bytes of a tensor of `shape` in `qtype` (rows a whole number of blocks), unpadded."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * size


def _f16_file_type(shape: tuple[int, ...], file_type: str) -> gguf.GGMLQuantizationType:
    """The tensor type an unquantized GGUF of `file_type` (F16, BF16, F32) holds: 1-D tensors stay F32."""
    return gguf.GGMLQuantizationType.F32 if len(shape) == 1 else gguf.GGMLQuantizationType[file_type]


def write_skeleton(config: dict, path: Path, header_from: Path | None = None) -> tuple[list, int]:
    """An F16 GGUF with the model's metadata and tensor table but no data (a sparse file).

    Returns the tensor layout (GGUF name, shape) and where tensor data starts (the header's
    padded size).

    With `header_from` (a checkpoint folder with tokenizer files), the metadata is the
    real converter's, so the header size matches the file a build writes.
    """

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    write_hparams(writer, config, OUTTYPES["F16"][0])
    if header_from is not None:
        write_general(writer, ModelMeta(name="skeleton"))
        write_vocab(writer, header_from, config["vocab_size"])
    layout, data_bytes = [], 0
    for t in model_tensors(config):
        name = names.get_name(t.name, try_suffixes=(".weight",))
        assert name is not None  # every Llama tensor model_tensors lists is in gguf's Llama map
        qtype = _f16_file_type(t.shape, "F16")
        nbytes = gguf_nbytes(t.shape, qtype)
        dtype = np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16
        writer.add_tensor_info(name, t.shape, np.dtype(dtype), nbytes)
        layout.append((name, t.shape))
        data_bytes += gguf.GGUFWriter.ggml_pad(nbytes, writer.data_alignment)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    fout = writer.fout[0] if isinstance(writer.fout, list) else writer.fout
    assert fout is not None  # write_header_to_file opened the file
    data_start = gguf.GGUFWriter.ggml_pad(fout.tell(), writer.data_alignment)
    writer.close()
    os.truncate(path, data_start + data_bytes)
    return layout, data_start


def llama_cpp_tensor_types(skeleton: Path, quant_type: str, imatrix: bool = False) -> dict[str, str]:
    """{GGUF tensor name: type name} as llama.cpp would quantize the skeleton (dry run, nothing written)."""
    import llama_cpp
    import llama_cpp._logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode("utf-8", "replace"))

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type(quant_type)
    params.dry_run = True
    params.nthread = 1
    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        rc = llama_cpp.llama_model_quantize(str(skeleton).encode(), os.devnull.encode(), ctypes.byref(params))
    finally:
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))
    if rc != 0:
        raise EngineError(f"llama.cpp dry run for {quant_type} failed (code {rc})")
    types = {}
    for line in "".join(lines).splitlines():
        match = _TENSOR_LINE.search(line)
        if match:
            name, current, new = match.groups()
            types[name] = (new or current).upper()
    return types


def predict_gguf_many(config: dict, quant_types: list[str], header_from: Path | None = None) -> dict[str, int]:
    """Predicted file bytes per GGUF type, one skeleton shared by all dry runs."""
    if not quant_types:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        skeleton = Path(tmp) / "skeleton.F16.gguf"
        layout, data_start = write_skeleton(config, skeleton, header_from)
        shapes = dict(layout)
        out = {}
        for quant_type in quant_types:
            if quant_type in ("F16", "F32", "BF16"):
                types = {name: _f16_file_type(shape, quant_type) for name, shape in layout}
            else:
                types = {
                    n: gguf.GGMLQuantizationType[t] for n, t in llama_cpp_tensor_types(skeleton, quant_type).items()
                }
            out[quant_type] = data_start + sum(
                gguf.GGUFWriter.ggml_pad(gguf_nbytes(shapes[n], t), gguf.GGUF_DEFAULT_ALIGNMENT)
                for n, t in types.items()
            )
        return out
