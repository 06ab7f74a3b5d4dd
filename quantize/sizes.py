"""Predicted file sizes from config.json alone, following each format's real layout.

GPTQ and AWQ sizes are sums over the tensors those formats write (packed ints, zeros,
fp16 scales, g_idx; unquantized embeddings, lm_head and norms in fp16) plus the
safetensors header. GGUF per-tensor types are llama.cpp's own choices for a k-quant mix,
obtained by a dry run of its quantizer on a sparse skeleton file: headers only, no
weights, so a 7B plan costs milliseconds and no disk.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from .config import AWQSpec, GPTQSpec
from .errors import EngineError


@dataclass(frozen=True)
class Tensor:
    name: str  # HF name
    shape: tuple[int, ...]  # torch order: [out, in] for linears

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_linear(self) -> bool:
        return ".layers." in self.name and self.name.endswith("proj.weight")


def model_tensors(config: dict) -> list[Tensor]:
    """Every tensor of a Llama/Mistral checkpoint, from its hyperparameters."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    out = [Tensor("model.embed_tokens.weight", (vocab, hidden)), Tensor("model.norm.weight", (hidden,))]
    if not config.get("tie_word_embeddings"):
        out.append(Tensor("lm_head.weight", (vocab, hidden)))
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        out += [
            Tensor(f"{p}.input_layernorm.weight", (hidden,)),
            Tensor(f"{p}.post_attention_layernorm.weight", (hidden,)),
            Tensor(f"{p}.self_attn.q_proj.weight", (heads * head_dim, hidden)),
            Tensor(f"{p}.self_attn.k_proj.weight", (kv * head_dim, hidden)),
            Tensor(f"{p}.self_attn.v_proj.weight", (kv * head_dim, hidden)),
            Tensor(f"{p}.self_attn.o_proj.weight", (hidden, heads * head_dim)),
            Tensor(f"{p}.mlp.gate_proj.weight", (inter, hidden)),
            Tensor(f"{p}.mlp.up_proj.weight", (inter, hidden)),
            Tensor(f"{p}.mlp.down_proj.weight", (hidden, inter)),
        ]
    return out


def param_count(config: dict) -> int:
    return sum(t.numel for t in model_tensors(config))


def _safetensors_bytes(entries: list[tuple[str, str, tuple[int, ...], int]]) -> int:
    """Data plus the JSON header safetensors writes: (name, dtype, shape, nbytes) per tensor."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape, nbytes in sorted(entries):
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"))
    return 8 + len(text) + (-len(text) % 8) + offset


def predict_gptq(config: dict, spec: GPTQSpec) -> int:
    entries = []
    for t in model_tensors(config):
        if not t.is_linear:
            entries.append((t.name, "F16", t.shape, t.numel * 2))
            continue
        out_f, in_f = t.shape
        groups = 1 if spec.group_size == -1 else math.ceil(in_f / spec.group_size)
        stem = t.name.removesuffix(".weight")
        entries += [
            (f"{stem}.qweight", "I32", (in_f * spec.bits // 32, out_f), in_f * spec.bits // 32 * out_f * 4),
            (f"{stem}.qzeros", "I32", (groups, out_f * spec.bits // 32), groups * out_f * spec.bits // 32 * 4),
            (f"{stem}.scales", "F16", (groups, out_f), groups * out_f * 2),
            (f"{stem}.g_idx", "I32", (in_f,), in_f * 4),
        ]
    return _safetensors_bytes(entries)


def predict_awq(config: dict, spec: AWQSpec) -> int:
    entries = []
    pack = 32 // spec.bits
    for t in model_tensors(config):
        if not t.is_linear:
            entries.append((t.name, "F16", t.shape, t.numel * 2))
            continue
        out_f, in_f = t.shape
        groups = in_f // spec.group_size
        stem = t.name.removesuffix(".weight")
        entries += [
            (f"{stem}.qweight", "I32", (in_f, out_f // pack), in_f * out_f // pack * 4),
            (f"{stem}.qzeros", "I32", (groups, out_f // pack), groups * out_f // pack * 4),
            (f"{stem}.scales", "F16", (groups, out_f), groups * out_f * 2),
        ]
    return _safetensors_bytes(entries)


# --- GGUF: llama.cpp's per-tensor choices, read from a dry run on a skeleton ----------------

_TENSOR_LINE = re.compile(r"\]\s+(\S+)\s+-\s+\[.*?type =\s+(\w+),.*?(?:\((\w+)\)|$)")


def _gguf_nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
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
    from .gguf_convert import OUTTYPES, ModelMeta, write_general, write_hparams, write_vocab

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    write_hparams(writer, config, OUTTYPES["F16"][0])
    if header_from is not None:
        write_general(writer, ModelMeta(name="skeleton"))
        write_vocab(writer, header_from, config["vocab_size"])
    layout, data_bytes = [], 0
    for t in model_tensors(config):
        name = names.get_name(t.name, try_suffixes=(".weight",))
        qtype = _f16_file_type(t.shape, "F16")
        nbytes = _gguf_nbytes(t.shape, qtype)
        dtype = np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16
        writer.add_tensor_info(name, t.shape, np.dtype(dtype), nbytes)
        layout.append((name, t.shape))
        data_bytes += gguf.GGUFWriter.ggml_pad(nbytes, writer.data_alignment)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    fout = writer.fout[0] if isinstance(writer.fout, list) else writer.fout
    data_start = gguf.GGUFWriter.ggml_pad(fout.tell(), writer.data_alignment)
    writer.close()
    os.truncate(path, data_start + data_bytes)
    return layout, data_start


def llama_cpp_tensor_types(skeleton: Path, quant_type: str, imatrix: bool = False) -> dict[str, str]:
    """{GGUF tensor name: type name} as llama.cpp would quantize the skeleton (dry run, nothing written)."""
    import llama_cpp
    import llama_cpp._logger

    from .gguf_quant import file_type

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
                types = {n: gguf.GGMLQuantizationType[t] for n, t in llama_cpp_tensor_types(skeleton, quant_type).items()}
            out[quant_type] = data_start + sum(
                gguf.GGUFWriter.ggml_pad(_gguf_nbytes(shapes[n], t), gguf.GGUF_DEFAULT_ALIGNMENT) for n, t in types.items())
        return out
