"""Size-budget GGUF mixes: per-tensor llama.cpp types chosen by measured sensitivity to fill a byte budget.

llama.cpp's named types (Q4_K_M...) are hand-written rules: Q6_K for half of attn_v and
ffn_down, Q4_K elsewhere. A budget mix measures instead, in two steps, once per F16 file and
importance matrix (cached):

1. For every 2-D tensor and every candidate type, ggml's own quantizer (`ggml_quantize_chunk`,
   with the importance matrix) rounds a sample of its rows; the error is the imatrix-weighted
   squared error relative to the tensor's imatrix-weighted energy: the expected relative error
   of the layer's output on the calibration activations (exllamav2's measurement, with
   llama.cpp's quantizers).
2. Relative errors say which type suits a tensor, not how much the tensor matters to the
   output. One probe per tensor class (attn_v, ffn_down, the head...) quantizes that class
   alone and scores it against the F16 file in llama.cpp; KLD per unit of summed error turns
   every error into KLD.

A greedy walk along each tensor's convex hull of (bytes, loss) then spends the budget where it
removes the most loss per byte. llama.cpp writes the file from the F16 GGUF with the chosen
types as per-tensor overrides (`tt_overrides`), so the quantization itself is the engine's and
every client reads the file as any other GGUF.
"""

from __future__ import annotations

import ctypes
import heapq
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gguf
import numpy as np

from ...errors import ConfigError, EngineError, QuantizeError
from ...progress import bar
from ...scoring import reference, score
from ...sizes import model_tensors
from .llamacpp import gguf_logits, load_gguf
from .quantize import quantize_file
from .sizes import gguf_nbytes

log = logging.getLogger(__name__)

# ggml tensor types a mix chooses from, cheapest first; a tensor whose rows a type's block does not divide
# (SmolLM2's 576-wide inputs and 256-element k-quant blocks) only gets the types that fit.
CANDIDATES = ("Q2_K", "Q3_K", "IQ4_XS", "IQ4_NL", "Q4_0", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0")
SAMPLE_ROWS = 512  # rows measured per tensor and type: the error is a mean over rows, sampled evenly
PROBE_TYPE = "Q4_0"  # 32-wide blocks fit every tensor of a dense model: one probe type for every class
PROBE_TOKENS = 1024  # calibration tokens each class probe is scored on
MEASURE_VERSION = 3  # bump when the measurement changes, so cached sensitivities are recomputed


@dataclass(frozen=True)
class Option:
    qtype: str
    nbytes: int
    error: float  # relative output error (measure), or that times its class's KLD per error (probe)


@dataclass(frozen=True)
class TensorSensitivity:
    name: str
    shape: tuple[int, ...]
    options: tuple[Option, ...]  # the candidates that fit its rows, as measured


def tensor_bytes(shape: tuple[int, ...], qtype: str) -> int:
    return gguf_nbytes(shape, gguf.GGMLQuantizationType[qtype])


def fits(shape: tuple[int, ...], qtype: str) -> bool:
    return shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0] == 0


def _ggml():
    """ggml's C quantizer from the library llama-cpp-python loads (the one llama.cpp quantizes with)."""
    from llama_cpp import _ggml as bindings

    lib = bindings.libggml
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_float),
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.POINTER(ctypes.c_float),
    ]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib


def _round_trip(lib, rows: np.ndarray, qtype: str, weights: np.ndarray | None) -> np.ndarray:
    """`rows` quantized by ggml as `qtype` (imatrix-weighted when given) and dequantized by gguf-py."""
    kind = gguf.GGMLQuantizationType[qtype]
    lib.ggml_quantize_init(int(kind))
    n, width = rows.shape
    out = np.empty(tensor_bytes(rows.shape, qtype), dtype=np.uint8)
    as_float = ctypes.POINTER(ctypes.c_float)
    lib.ggml_quantize_chunk(
        int(kind),
        rows.ctypes.data_as(as_float),
        out.ctypes.data_as(ctypes.c_void_p),
        0,
        n,
        width,
        None if weights is None else weights.ctypes.data_as(as_float),
    )
    return gguf.quants.dequantize(out.reshape(n, -1), kind).reshape(n, width)


def measure(f16: Path, imatrix: dict[str, np.ndarray], candidates: tuple[str, ...]) -> list[TensorSensitivity]:
    """Every 2-D tensor's error under every candidate that fits it, on evenly spaced rows of the F16 file."""
    lib = _ggml()
    reader = gguf.GGUFReader(f16)
    tensors = [t for t in reader.tensors if len(t.shape) > 1]  # norms (1-D) stay F32
    out: list[TensorSensitivity] = []
    pool = ThreadPoolExecutor(max(1, min(len(candidates), os.cpu_count() or 1)))
    for t in bar(tensors, desc="mix: measuring tensors", unit="tensor"):
        data = np.asarray(t.data)
        width = data.shape[-1]
        shape = (int(np.prod(data.shape[:-1])), width)
        step = max(1, shape[0] // SAMPLE_ROWS)
        rows = np.ascontiguousarray(data.reshape(shape)[::step][:SAMPLE_ROWS], dtype=np.float32)
        weights = imatrix.get(t.name)
        col = np.ones(width, dtype=np.float64) if weights is None else weights.astype(np.float64)
        weights32 = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
        energy = float((rows.astype(np.float64) ** 2 @ col).sum()) or 1.0
        fitting = [q for q in candidates if fits(shape, q)]

        def error(qtype: str, rows=rows, weights32=weights32, col=col, energy=energy) -> float:
            delta = _round_trip(lib, rows, qtype, weights32).astype(np.float64) - rows
            return float((delta**2 @ col).sum()) / energy

        errors = list(pool.map(error, fitting))
        options = tuple(Option(q, tensor_bytes(shape, q), e) for q, e in zip(fitting, errors, strict=True))
        out.append(TensorSensitivity(t.name, shape, options))
    pool.shutdown()
    return out


def _hull(options: tuple[Option, ...]) -> list[Option]:
    """The options on the lower convex hull of (bytes, error): the only ones a marginal-rate walk should visit."""
    points: list[Option] = []
    for o in sorted(options, key=lambda o: (o.nbytes, o.error)):
        if points and o.error >= points[-1].error:
            continue  # costs more, no better
        while len(points) >= 2:
            a, b = points[-2], points[-1]
            # drop b when it lies above the segment a -> o
            if (b.error - a.error) * (o.nbytes - a.nbytes) >= (o.error - a.error) * (b.nbytes - a.nbytes):
                points.pop()
            else:
                break
        points.append(o)
    return points


def choose(sensitivity: list[TensorSensitivity], budget: int) -> dict[str, str]:
    """{tensor: type} with the least total error whose tensor bytes fit `budget`.

    Starts every tensor at its cheapest hull point, then takes upgrades in order of error saved per
    byte while they fit; an upgrade too large for what is left is skipped, not the end of the walk.
    """
    hulls = {s.name: _hull(s.options) for s in sensitivity}
    at = {name: 0 for name in hulls}
    spent = sum(h[0].nbytes for h in hulls.values())
    if spent > budget:
        raise QuantizeError(
            f"the smallest mix of the candidate types needs {spent / 1e9:.3f} GB of tensors, "
            f"over the budget's {budget / 1e9:.3f} GB",
            fix="raise target_bpw / max_size_gb, or use a fixed type such as IQ2_M",
        )

    def upgrade(name: str) -> tuple[float, str, int] | None:
        hull, i = hulls[name], at[name]
        if i + 1 >= len(hull):
            return None
        cost = hull[i + 1].nbytes - hull[i].nbytes
        return (-(hull[i].error - hull[i + 1].error) / cost, name, i)

    heap = [u for u in map(upgrade, hulls) if u is not None]
    heapq.heapify(heap)
    while heap:
        _, name, i = heapq.heappop(heap)
        hull = hulls[name]
        cost = hull[i + 1].nbytes - hull[i].nbytes
        if spent + cost > budget:
            continue
        spent += cost
        at[name] = i + 1
        nxt = upgrade(name)
        if nxt is not None:
            heapq.heappush(heap, nxt)
    return {name: hulls[name][i].qtype for name, i in at.items()}


def size_range(config: dict, candidates: tuple[str, ...]) -> tuple[int, int]:
    """(smallest, largest) bytes of the 2-D tensors over the candidates that fit each, from config.json alone."""
    low = high = 0
    for t in model_tensors(config):
        if len(t.shape) < 2:
            low, high = low + 4 * t.numel, high + 4 * t.numel  # norms stay F32
            continue
        sizes = [tensor_bytes(t.shape, q) for q in candidates if fits(t.shape, q)]
        low, high = low + min(sizes), high + max(sizes)
    return low, high


def check_budget(config: dict, budget: int, candidates: tuple[str, ...], file: str, field: str) -> None:
    """Refuse, before any work, a budget no mix of the candidates can meet or that only Q8_0 everywhere fills."""
    for t in model_tensors(config):
        if len(t.shape) == 2 and not any(fits(t.shape, q) for q in candidates):
            raise ConfigError(
                file,
                f"{field.rsplit(':', 1)[0]}: mix_types",
                f"no type of {', '.join(candidates)} fits {t.name} (rows of {t.shape[-1]})",
                "add a type with 32-wide blocks such as Q5_0 or Q8_0",
            )
    low, high = size_range(config, candidates)
    low = int(low * 1.01)  # the header (vocabulary) comes on top: about 1% for a small model
    if budget < low:
        raise ConfigError(
            file,
            field,
            f"a budget of {budget / 1e9:.3f} GB is below the smallest mix ({low / 1e9:.3f} GB, Q2_K/IQ4_NL-class)",
            "raise target_bpw / max_size_gb, or use a fixed type such as IQ2_M",
        )
    if budget >= high:
        raise ConfigError(
            file,
            field,
            f"a budget of {budget / 1e9:.3f} GB fits every tensor at Q8_0 ({high / 1e9:.3f} GB): nothing to choose",
            "use `quant_type: Q8_0`, or lower the budget",
        )


def measure_ram(config: dict, n_types: int) -> int:
    """The measurement holds one tensor's sampled rows in float32 and float64 (and the round trip), and the
    sampled pages of the mapped F16 file stay resident: about SAMPLE_ROWS rows of every tensor."""
    tensors = [t for t in model_tensors(config) if len(t.shape) == 2]
    widest = max(t.shape[-1] for t in tensors)
    resident = sum(min(SAMPLE_ROWS, t.shape[0]) * t.shape[-1] * 2 for t in tensors)
    return resident + 6 * 8 * SAMPLE_ROWS * widest * n_types


def to_json(sensitivity: list[TensorSensitivity], scales: dict[str, float]) -> dict:
    tensors = [
        {"name": s.name, "shape": list(s.shape), "options": [[o.qtype, o.nbytes, o.error] for o in s.options]}
        for s in sensitivity
    ]
    return {"tensors": tensors, "kld_per_error": scales}


def from_json(data: dict) -> tuple[list[TensorSensitivity], dict[str, float]]:
    tensors = [
        TensorSensitivity(r["name"], tuple(r["shape"]), tuple(Option(q, int(n), float(e)) for q, n, e in r["options"]))
        for r in data["tensors"]
    ]
    return tensors, data["kld_per_error"]


def fixed_bytes(f16: Path, sensitivity: list[TensorSensitivity]) -> int:
    """What the mix does not choose: the header (metadata, vocabulary, tensor table) and the F32 tensors, with
    each tensor's alignment padding counted at its worst."""
    reader = gguf.GGUFReader(f16)
    chosen = {s.name for s in sensitivity}
    rest = sum(int(t.n_bytes) for t in reader.tensors if t.name not in chosen)
    return int(reader.data_offset) + rest + gguf.GGUF_DEFAULT_ALIGNMENT * len(reader.tensors)


def predicted_error(sensitivity: list[TensorSensitivity], types: dict[str, str]) -> float:
    return sum(next(o.error for o in s.options if o.qtype == types[s.name]) for s in sensitivity)


def _pattern(name: str) -> str:
    """The regex llama.cpp matches (std::regex_search) against tensor names: exactly this tensor."""
    return f"^{re.escape(name)}$"


def tensor_type_lines(types: dict[str, str]) -> str:
    """The mix as llama-quantize's `--tensor-type-file` takes it: `PATTERN=TYPE` per line, one per tensor. With
    the published importance matrix, `llama-quantize --imatrix M --tensor-type-file T F16.gguf OUT.gguf Q4_K_M`
    writes the same tensors (the types llama.cpp leaves alone, norms in F32, are those of any Q4_K_M file)."""
    return "".join(f"{_pattern(name)}={types[name]}\n" for name in sorted(types))


def _overrides(types: dict[str, str]):
    """llama.cpp's per-tensor type overrides, one exact-name pattern per tensor, NULL-terminated. The patterns'
    bytes are kept on the array (ctypes only borrows them)."""
    import llama_cpp

    overrides = (llama_cpp.llama_model_tensor_override * (len(types) + 1))()
    patterns = [_pattern(name).encode() for name in sorted(types)]
    for i, (pattern, name) in enumerate(zip(patterns, sorted(types), strict=True)):
        overrides[i].pattern = pattern
        overrides[i].type = int(gguf.GGMLQuantizationType[types[name]])
    overrides[len(types)].pattern = None
    overrides._keep = patterns  # type: ignore[attr-defined]
    return overrides


def tensor_class(name: str) -> str:
    """`blk.7.attn_v.weight` -> `attn_v.weight`: the tensors a probe quantizes together."""
    return re.sub(r"^blk\.\d+\.", "", name)


def probe(
    f16: Path, sensitivity: list[TensorSensitivity], imatrix: dict[str, np.ndarray], windows: np.ndarray
) -> tuple[list[TensorSensitivity], dict[str, float]]:
    """The errors in KLD units: each tensor class (attn_v, ffn_down, the output head...) quantized alone to
    `PROBE_TYPE` by llama.cpp, the rest left F16, and scored on calibration tokens against the F16 file.

    The relative errors say which type suits a tensor; they do not say how much a tensor matters to the
    output (the head's error reaches the logits directly, one layer's q_proj barely). KLD per unit of summed
    error, per class, turns them into one currency, so the walk spends bytes where the output gains most.
    """

    n_ctx = int(windows.shape[1])
    base = load_gguf(f16, n_ctx=n_ctx)
    ref = reference(windows, partial(gguf_logits, base))
    base.close()
    classes: dict[str, list[TensorSensitivity]] = {}
    for s in sensitivity:
        classes.setdefault(tensor_class(s.name), []).append(s)
    scales: dict[str, float] = {}
    for cls, members in bar(sorted(classes.items()), desc="mix: probing tensor classes", unit="class"):
        probe_type = {s.name: next(o for o in s.options if o.qtype == PROBE_TYPE) for s in members}
        path = f16.with_name(f".probe-{os.getpid()}.gguf")
        try:
            # every other tensor stays F16 by override: llama.cpp ignores overrides under an F16 file type
            types = {s.name: PROBE_TYPE if s.name in probe_type else "F16" for s in sensitivity}
            quantize_file(f16, path, "Q8_0", imatrix, overrides=_overrides(types))
            llm = load_gguf(path, n_ctx=n_ctx)
            kld = score(windows, partial(gguf_logits, llm), ref, desc=f"probe {cls}").mean_kld or 0.0
            llm.close()
        finally:
            path.unlink(missing_ok=True)
        error = sum(o.error for o in probe_type.values())
        scales[cls] = max(kld, 1e-9) / error if error > 0 else 0.0
        log.info("mix: %s at %s: KLD %.5f over summed error %.5f", cls, PROBE_TYPE, kld, error)
    scaled = [
        TensorSensitivity(
            s.name, s.shape, tuple(Option(o.qtype, o.nbytes, o.error * scales[tensor_class(s.name)]) for o in s.options)
        )
        for s in sensitivity
    ]
    return scaled, scales


def quantize_mix(
    src: Path,
    dst: Path,
    types: dict[str, str],
    imatrix: dict[str, np.ndarray],
    file_type: str = "Q4_K_M",
    metadata: dict[str, str | int] | None = None,
) -> None:
    """llama.cpp writes `dst` from the F16 `src` with every tensor's type given as an exact-name override."""

    quantize_file(src, dst, file_type, imatrix, overrides=_overrides(types), metadata=metadata)
    written = {t.name: t.tensor_type.name for t in gguf.GGUFReader(dst).tensors if t.name in types}
    wrong = {n: (written.get(n), q) for n, q in types.items() if written.get(n) != q}
    if wrong:
        name, (got, want) = next(iter(wrong.items()))
        raise EngineError(f"llama.cpp wrote {name} as {got}, the mix chose {want} ({len(wrong)} tensors differ)")
