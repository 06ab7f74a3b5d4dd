"""What a variant folder holds, and the rules every published file obeys."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import EngineError
from .hashing import file_sha256
from .records import OutputFile

MODEL_SUFFIXES = (".safetensors", ".gguf")


def variant_folder(out_root: Path, variant) -> Path:
    """The one place a variant's outputs live: `OUT/BRANCH` (build writes it, check, card and publish read it)."""
    return Path(out_root) / variant.branch


def model_bytes(files: list[OutputFile]) -> int:
    """Bytes of weight files (safetensors or GGUF), the numerator of bits per weight."""
    return sum(f.size for f in files if f.path.endswith(MODEL_SUFFIXES))


def list_files(folder: Path, exclude: tuple[str, ...] = ("report.json",)) -> list[OutputFile]:
    return [
        OutputFile(path=str(p.relative_to(folder)), size=p.stat().st_size, sha256=file_sha256(p))
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in exclude
    ]


# Vocabularies may hold any string (a token "/home" is fine); only configs are scanned.
_NOT_CONFIGS = {"tokenizer.json", "vocab.json"}


def _local_prefixes(folder: Path) -> tuple[str, ...]:
    prefixes = {
        tempfile.gettempdir(),
        str(Path.home()),
        os.getcwd(),
        str(folder.resolve().parent),
        "/tmp/",
        "/home/",
        "/root/",
        "/Users/",
    }
    return tuple(sorted(p for p in prefixes if p.startswith("/") and p != "/"))


def _strings(value: Any, where: str):
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")


def assert_no_local_paths(folder: Path) -> None:
    """Published configs must not carry paths of the machine that built them."""
    prefixes = _local_prefixes(Path(folder))
    for file in sorted(Path(folder).glob("*.json")):
        if file.name in _NOT_CONFIGS:
            continue
        for where, text in _strings(json.loads(file.read_text()), file.name):
            if text.startswith(prefixes):
                raise EngineError(f"{file.name}: {where} holds a local path {text!r}; refusing to write it")
