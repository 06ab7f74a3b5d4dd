"""llama.cpp's importance matrix, computed from the HF model on the cached calibration tokens.

For every matrix llama.cpp quantizes, the per-input-column sum of squared activations over
the calibration tokens and the token count: what `llama-imatrix` measures, taken here with
forward hooks on the HF model so no ggml graph has to be mirrored. Columns are inputs, so
the Q/K row permutation of the converter does not touch them.

Kept (in the cache, and published beside the i1 files) in llama.cpp's own GGUF imatrix
format: `NAME.in_sum2` (float32, one row per matrix) and `NAME.counts` (float32), with
`general.type = imatrix`, `imatrix.datasets`, `imatrix.chunk_count` and `imatrix.chunk_size`,
as `llama-imatrix` writes it and `llama-quantize --imatrix` reads it. The values llama.cpp
quantizes with are `in_sum2 / counts` in float32; `Imatrix.means` divides the same float32s
the same way, so a file quantized here and one quantized by llama-quantize from the published
matrix see identical weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from ...streaming import LayerStream, chunk_rows

log = logging.getLogger(__name__)


IN_SUM2, COUNTS = ".in_sum2", ".counts"  # llama.cpp's tensor-name suffixes
KV_DATASETS, KV_CHUNK_COUNT, KV_CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"


@dataclass(frozen=True)
class Imatrix:
    """Per GGUF tensor: the float32 sum of x^2 per input column, and the tokens summed (llama.cpp's layout)."""

    sums: dict[str, np.ndarray]
    counts: dict[str, int]
    datasets: tuple[str, ...] = ()
    chunk_count: int = 0
    chunk_size: int = 0

    def means(self) -> dict[str, np.ndarray]:
        """What llama.cpp quantizes with: each sum over its count, divided in float32 as llama-quantize does."""
        return {name: self.sums[name] / np.float32(self.counts[name]) for name in self.sums}


def compute_imatrix(model_dir: Path, input_ids: np.ndarray) -> Imatrix:
    """{GGUF tensor name: sum x^2 per input column, and its token count}, for every Linear of the model.

    The model runs layer by layer (`streaming.LayerStream`): float32 on a CPU without ever
    holding more than one layer, half precision on a GPU; sums are kept in float64. Large
    calibration sets go through the layers in chunks of `streaming.CHUNK_TOKENS` tokens.
    """
    import torch

    stream = LayerStream(model_dir)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, stream.config.num_hidden_layers)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def add(hf_name: str, x) -> None:
        gguf_name = names.get_name(f"{hf_name}.weight", try_suffixes=(".weight",))
        if gguf_name is None:
            return
        x = x.detach().to(torch.float64)
        sums[gguf_name] = sums.get(gguf_name, 0) + (x * x).sum(dim=0).cpu()
        counts[gguf_name] = counts.get(gguf_name, 0) + x.shape[0]

    rows, seq_len = input_ids.shape
    step = chunk_rows(rows, seq_len)
    for start in range(0, rows, step):
        part = f" {start // step + 1}/{-(-rows // step)}" if step < rows else ""
        final = stream.final_hidden(input_ids[start : start + step], hook=add, desc=f"imatrix{part}")
        if not getattr(stream.config, "tie_word_embeddings", False):  # a tied output is the embedding: no imatrix
            add("lm_head", final.reshape(-1, final.shape[-1]))
        del final
    return Imatrix(
        sums={name: sums[name].to(torch.float32).numpy() for name in sorted(sums)},
        counts={name: counts[name] for name in sorted(sums)},
        chunk_count=rows,
        chunk_size=seq_len,
    )


def save_imatrix(path: Path, matrix: Imatrix, dataset: str) -> None:
    """`matrix` as llama.cpp's GGUF imatrix file (see the module's docstring), `dataset` naming the text."""
    writer = gguf.GGUFWriter(path, arch="imatrix")
    writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # llama-imatrix writes none: it is not a model
    writer.add_type("imatrix")
    writer.add_array(KV_DATASETS, [dataset])
    writer.add_uint32(KV_CHUNK_COUNT, matrix.chunk_count)
    writer.add_uint32(KV_CHUNK_SIZE, matrix.chunk_size)
    for name in sorted(matrix.sums):
        writer.add_tensor(name + IN_SUM2, np.ascontiguousarray(matrix.sums[name], dtype=np.float32).reshape(1, -1))
        writer.add_tensor(name + COUNTS, np.array([[matrix.counts[name]]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def load_imatrix(path: Path) -> Imatrix:
    """A GGUF imatrix file read back with gguf-py (one matrix per tensor: the dense models this toolkit reads)."""
    reader = gguf.GGUFReader(path)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for t in reader.tensors:
        if t.name.endswith(IN_SUM2):
            sums[t.name.removesuffix(IN_SUM2)] = np.array(t.data, dtype=np.float32).reshape(-1)
        elif t.name.endswith(COUNTS):
            counts[t.name.removesuffix(COUNTS)] = int(np.array(t.data).reshape(-1)[0])
    field = reader.get_field(KV_DATASETS)
    datasets = tuple(field.contents()) if field is not None else ()
    chunk_count, chunk_size = (reader.get_field(k) for k in (KV_CHUNK_COUNT, KV_CHUNK_SIZE))
    return Imatrix(
        sums=sums,
        counts=counts,
        datasets=datasets,
        chunk_count=int(chunk_count.contents()) if chunk_count is not None else 0,
        chunk_size=int(chunk_size.contents()) if chunk_size is not None else 0,
    )
