"""The reproducible-bytes trials, shared by tests/test_reproducible.py and bench/reproducible.py.

One variant per engine and path is built from the same inputs into a folder and a cache of its own
(only the downloaded calibration package is shared), so every build tokenizes the calibration text,
converts the F16 GGUF, computes the importance matrix and measures the mix itself instead of reading
another build's results. What may differ between builds is report.json (timings, dates).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from quantize.outputs import list_files

AUTOROUND = {"iters": 4, "batch_size": 4}
# gptqmodel GPTQ (act order) and AWQ, AutoRound in both exports, an i1 GGUF (F16 conversion, importance
# matrix, llama.cpp's quantizer), a size-budget mix (its measurement), MLX.
VARIANTS = [
    {"format": "gptq", "group_size": 32, "default": True},
    {"format": "awq", "group_size": 32, "default": True},
    {"format": "gptq", "group_size": 32, "autoround": AUTOROUND},
    {"format": "awq", "group_size": 32, "autoround": AUTOROUND},
    {"format": "gguf", "quant_type": "Q4_K_M"},
    {"format": "gguf", "target_bpw": 4.5},
    {"format": "mlx", "bits": 4},
]
BRANCHES = {  # branch -> the engine that wrote it
    "gptq-4bit-32g-actorder_True": "gptqmodel GPTQ",
    "awq-4bit-32g": "gptqmodel AWQ",
    "gptq-4bit-32g-autoround": "auto-round, GPTQ export",
    "awq-4bit-32g-autoround": "auto-round, AWQ export",
    "gguf-i1-q4_k_m": "llama.cpp i1 (our imatrix)",
    "gguf-i1-mix-4.5bpw": "llama.cpp mix (our measurement)",
    "mlx-4bit": "mlx-lm",
}
CACHE_ENTRIES = ("calibration", "gguf", "imatrix", "mix")  # what every build computes for itself


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file of a built variant but its report, read from the bytes (no remembered digest)."""
    return {f.path: f.sha256 for f in list_files(folder, memo=False)}


def differences(a: Path, b: Path) -> list[str]:
    """The files whose bytes differ between two builds of a variant (or that only one has)."""
    left, right = digests(a), digests(b)
    return [name for name in sorted(left.keys() | right.keys()) if left.get(name) != right.get(name)]


def build(config: Path, work: Path, name: str, downloads: Path, env: dict[str, str] | None = None) -> Path:
    """Build every variant of `config` into WORK/out-NAME with a fresh cache WORK/cache-NAME."""
    from conftest import run_cli

    cache, out = work / f"cache-{name}", work / f"out-{name}"
    shutil.copytree(downloads, cache / "pypi")
    run_cli(
        "build",
        *("--config", str(config), "--out", str(out), "--all", "--no-check"),
        cwd=work,
        check=True,
        env={"QUANTIZE_CACHE": str(cache), **(env or {})},
    )
    for entry in CACHE_ENTRIES:
        assert any((cache / entry).iterdir()), f"the {name} build made no {entry} cache entry of its own"
    return out
