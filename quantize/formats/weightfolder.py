"""What every safetensors weight-only folder gets after its engine ran (gptqmodel's or auto-round's), before
its configs are published: the base's tokenizer files, float tensors in float16 (what GPTQ/AWQ readers
expect), the published configs in place of the engine's, and no local path left.

Apart from `gptqmodel.py` so that both engines' modules use it without importing each other.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..basemodel import TOKENIZER_FILES
from ..errors import EngineError
from ..outputs import assert_no_local_paths
from ..paths import write_json


def finish_folder(base_path: Path, out: Path) -> None:
    """What every engine's folder gets before its configs are published: the base's tokenizer files, and
    unquantized tensors in float16 (engines save them in their compute dtype)."""
    _copy_tokenizer(base_path, out)
    cast_to_float16(out)


def publish_configs(
    out: Path, quantization_config: dict, extra_files: dict[str, dict], drop: tuple[str, ...] = ()
) -> None:
    """Replace gptqmodel's configs by the published ones, then refuse any local path left."""
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = quantization_config
    config.pop("_name_or_path", None)
    write_json(out / "config.json", config)
    for name in drop:
        (out / name).unlink(missing_ok=True)
    for name, value in extra_files.items():
        write_json(out / name, value)
    assert_no_local_paths(out)


def written_quantize_config(out: Path) -> dict:
    return json.loads((out / "quantize_config.json").read_text())


def engine_config(out: Path) -> dict:
    """`config.json`'s quantization_config as the engine wrote it (before publish_configs replaces it)."""
    return json.loads((out / "config.json").read_text()).get("quantization_config", {})


def _copy_tokenizer(base_path: Path, out: Path) -> None:
    for name in TOKENIZER_FILES:
        if (Path(base_path) / name).is_file() and not (out / name).exists():
            shutil.copy2(Path(base_path) / name, out / name)


def cast_to_float16(out: Path) -> None:
    """Unquantized tensors (embeddings, norms, lm_head) and scales as float16, as readers expect."""
    import torch
    from safetensors.torch import load_file, save_file

    for file in sorted(out.glob("*.safetensors")):
        tensors = load_file(file)
        changed = False
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and tensor.dtype != torch.float16:
                cast = tensor.to(torch.float16)
                if not torch.isfinite(cast).all():
                    raise EngineError(
                        f"{file.name}: {name} overflows float16; this model cannot be published in float16"
                    )
                tensors[name], changed = cast, True
        if changed:
            save_file(tensors, file, metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "float16"
    config.pop("torch_dtype", None)
    write_json(out / "config.json", config)
