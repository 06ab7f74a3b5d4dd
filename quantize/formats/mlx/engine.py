"""mlx-lm's converter run over a patched view of the base folder, and the folder made what mlx-community publishes."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from ...basemodel import TOKENIZER_FILES
from ...errors import ConfigError, EngineError
from ...outputs import assert_no_local_paths
from ...paths import write_json
from .spec import LEAKED_TOKENIZER_KEYS, MLXSpec, dtype_of, mlx_config, mlx_name, quantized_modules

log = logging.getLogger(__name__)


def check_architecture(config: dict, config_file: Path) -> None:
    """mlx-lm has one module per model_type; refuse at config time one it cannot load (found without importing)."""
    spec = importlib.util.find_spec("mlx_lm")
    model_type = config.get("model_type")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            config_file, "format", "mlx-lm is not installed", "pip install 'mlx[cpu]==0.32.4' 'mlx-lm==0.32.2'"
        )
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    # mlx-lm maps a few model types onto another's module (mistral -> llama)
    remapped = {"mistral": "llama"}.get(str(model_type), str(model_type))
    if not (models / f"{remapped}.py").is_file():
        raise ConfigError(
            config_file,
            "model_type",
            f"mlx-lm 0.32 has no model for {model_type!r}",
            "drop the mlx variants for this model, or use a Llama/Mistral checkpoint",
        )


def convert(base_path: Path, spec: MLXSpec, out: Path) -> None:
    """mlx_lm.convert over a patched view of the base folder, into `out` (which must not exist yet)."""
    from mlx_lm import convert as mlx_convert

    base_path = Path(base_path).resolve()
    config = json.loads((base_path / "config.json").read_text())
    view = out.with_name(out.name + ".src")
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir()
    try:
        for item in base_path.iterdir():
            if item.name != "config.json":
                (view / item.name).symlink_to(item)
        write_json(view / "config.json", mlx_config(config))
        log.info("mlx-lm: converting %s (%s)", base_path.name, mlx_name(spec))
        mlx_convert(
            str(view),
            str(out),
            quantize=True,
            q_bits=spec.bits,
            q_group_size=spec.group_size,
            q_mode=spec.mode,
            dtype=dtype_of(config),
            quant_predicate=spec.recipe,
        )
    finally:
        shutil.rmtree(view, ignore_errors=True)


def finish(base_path: Path, spec: MLXSpec, out: Path) -> None:
    """Make the folder what mlx-community publishes, then verify what mlx-lm will read from it."""
    (out / "README.md").unlink(missing_ok=True)  # mlx-lm's stub; the repo's card is written by `card`
    for name in TOKENIZER_FILES:  # the base's own tokenizer files, byte for byte, as every other format ships
        source = Path(base_path) / name
        if source.is_file():
            shutil.copy2(source, out / name)
    tok_config = out / "tokenizer_config.json"
    if tok_config.is_file():
        data = json.loads(tok_config.read_text())
        if any(k in data for k in LEAKED_TOKENIZER_KEYS):
            write_json(tok_config, {k: v for k, v in data.items() if k not in LEAKED_TOKENIZER_KEYS})
    base = json.loads((Path(base_path) / "config.json").read_text())
    verify(out, spec, mlx_config(base))
    assert_no_local_paths(out)


def verify(out: Path, spec: MLXSpec, expected: dict) -> None:
    """Refuse a folder mlx-lm would read differently from what was asked: rope, quantization, every module packed."""
    config = json.loads((out / "config.json").read_text())
    for key in ("rope_theta", "rope_scaling"):
        if expected.get(key) is not None and config.get(key) != expected[key]:
            raise EngineError(f"mlx-lm wrote {key}={config.get(key)!r}, the base has {expected[key]!r}")
    q = config.get("quantization") or {}
    if (q.get("bits"), q.get("group_size"), q.get("mode")) != (
        spec.bits if not spec.recipe else q.get("bits"),
        spec.group_size,
        spec.mode,
    ):
        raise EngineError(f"mlx-lm wrote quantization {q}, expected {spec.bits}-bit g{spec.group_size} {spec.mode}")
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    missing = [m for m, _ in quantized_modules(expected) if f"{m}.scales" not in index]
    if missing:
        raise EngineError(
            f"mlx-lm left {len(missing)} module(s) unquantized (first: {missing[0]}); "
            f"group size {spec.group_size} must divide every input width"
        )


class MLXScorer:
    """The files loaded by mlx-lm, computing in float32 (on a CPU bfloat16 quantized matmuls lose ~10x accuracy)."""

    model = None  # not a torch module: memory is the process's RSS

    def __init__(self, folder: Path):
        import mlx.core as mx
        from mlx_lm import load

        self.mx = mx
        self.net = load(str(folder))[0]
        self.net.set_dtype(mx.float32)

    def logits(self, window: np.ndarray) -> np.ndarray:
        mx = self.mx
        out = self.net(mx.array(np.asarray(window)[None].astype(np.int32)))[0].astype(mx.float32)
        return np.array(out)

    def greedy(self, ids: list[int], max_new_tokens: int, stop: int | None, pad: int | None = None) -> list[int]:
        from mlx_lm.generate import generate_step

        new: list[int] = []
        prompt = self.mx.array(np.asarray(ids, dtype=np.int32))
        for token, _ in generate_step(prompt, self.net, max_tokens=max_new_tokens):
            new.append(int(token))
            if stop is not None and new[-1] == stop:
                break
        return new
