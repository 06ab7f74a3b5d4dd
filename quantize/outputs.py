"""What a variant folder holds, and the rules every published file obeys."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import DamagedOutput, EngineError
from .hashing import file_sha256
from .records import REPORT_NAME, SCHEMA_VERSION, OutputFile, Report

MODEL_SUFFIXES = (".safetensors", ".gguf")
PLOT_NAME = "comparison.png"  # the size-against-KLD plot every card shows
CARD_FILES = ("README.md", PLOT_NAME)  # what `card` writes for a repo and `publish` sends to each of its branches
HUB_FILES = (".gitattributes",)  # what the hub itself keeps on a branch: never ours to name or delete
IMATRIX_SUFFIX = ".imatrix.gguf"  # a GGUF that holds an importance matrix, not weights
TENSOR_TYPES_SUFFIX = ".tensor-types.txt"  # a size-budget GGUF's layout, for llama-quantize --tensor-type-file


def is_model_file(path: str) -> bool:
    """Weights (safetensors, a GGUF model), not the importance matrix published beside them."""
    return path.endswith(MODEL_SUFFIXES) and not path.endswith(IMATRIX_SUFFIX)


def variant_folder(out_root: Path, variant) -> Path:
    """The one place a variant's outputs live: `OUT/BRANCH` (build writes it, check, card and publish read it)."""
    return Path(out_root) / variant.branch


def built_report(out_root: Path, variant) -> Report | None:
    """The variant's report, its listed files present at their recorded sizes; None when it was never built.

    Everything else is damage, named by path (`DamagedOutput`): a report.json that cannot be read, is not
    JSON, does not validate or has another schema version; a file it lists that is missing or has another
    size (a truncated copy, a disk that filled); a folder holding files but no report.json (an interrupted
    copy from another host). Only sizes are compared here, which costs a stat per file even at 7B;
    publish also compares every sha256 before sending."""
    folder = variant_folder(out_root, variant)
    path = folder / REPORT_NAME
    if not path.exists():
        if folder.is_dir() and any(p.is_file() for p in folder.rglob("*")):
            raise DamagedOutput(folder, f"holds files but no {REPORT_NAME} (a copy or build cut short)", variant.name)
        return None
    try:
        data = json.loads(path.read_bytes())
    except OSError as err:
        raise DamagedOutput(path, f"cannot be read ({err.strerror or err})", variant.name) from None
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        where = f" at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise DamagedOutput(path, f"is not valid JSON{where}", variant.name) from None
    if not isinstance(data, dict):
        raise DamagedOutput(path, f"holds a JSON {type(data).__name__}, not a report object", variant.name)
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise DamagedOutput(path, f"has schema_version {version}, this quantize reads {SCHEMA_VERSION}", variant.name)
    try:
        report = Report.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise DamagedOutput(path, f"is not a valid report: {field}: {first['msg']}", variant.name) from None
    for f in report.files:
        file = folder / f.path
        if not file.is_file():
            raise DamagedOutput(file, f"is missing; {REPORT_NAME} lists it ({f.size} bytes)", variant.name)
        size = file.stat().st_size
        if size != f.size:
            raise DamagedOutput(file, f"has {size} bytes, {REPORT_NAME} says {f.size}", variant.name)
    return report


def model_bytes(files: list[OutputFile]) -> int:
    """Bytes of weight files (safetensors or GGUF), the numerator of bits per weight."""
    return sum(f.size for f in files if is_model_file(f.path))


def weight_bytes(report: dict) -> int:
    """`model_bytes` of a report.json read as plain JSON (the bench scripts' and tests' view of one)."""
    return sum(f["size"] for f in report["files"] if is_model_file(f["path"]))


def list_files(folder: Path, exclude: tuple[str, ...] = ("report.json",), memo: bool = True) -> list[OutputFile]:
    """Every file under `folder` but `exclude`, sorted; `memo=False` reads every byte (a comparison that must
    not trust a remembered digest)."""
    return [
        OutputFile(path=str(p.relative_to(folder)), size=p.stat().st_size, sha256=file_sha256(p, memo))
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
