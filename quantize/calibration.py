"""Calibration tokens: recipe -> documents -> token ids -> `samples` windows of `seq_len`.

The token tensor is cached under a content hash of (recipe, tokenizer files, text), so
every variant of a matrix and every later run reuses it; a changed recipe, tokenizer or
text gets a new entry. Windows are non-overlapping, drawn with the recipe's seed.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, Field

from .config import Strict, load_yaml
from .errors import CalibrationError
from .hashing import sha256_bytes, sha256_json, short
from .paths import atomic_target, cache_dir, exclusive, write_atomic
from .progress import bar
from .records import CalibrationStats
from .textsource import TextSource, read_documents

log = logging.getLogger(__name__)

StatsT = TypeVar("StatsT", bound=BaseModel)


class Recipe(Strict):
    """A calibration recipe file (`calibration/NAME.yaml`)."""

    description: str = ""
    source: TextSource
    join: str = Field(default="\n\n", description="separator placed between documents")
    min_chars: int = Field(default=0, ge=0, description="documents shorter than this are dropped")
    samples: int = Field(default=128, gt=0)
    seq_len: int = Field(default=4096, gt=0)
    seed: int = 0


@dataclass(frozen=True)
class LoadedRecipe:
    name: str
    path: Path
    recipe: Recipe

    def documents(self) -> tuple[list[str], str]:
        return collect_text(self.recipe.source, self.recipe.min_chars, self.path)

    def with_overrides(self, samples: int | None, seq_len: int | None) -> LoadedRecipe:
        update = {k: v for k, v in {"samples": samples, "seq_len": seq_len}.items() if v is not None}
        return LoadedRecipe(self.name, self.path, self.recipe.model_copy(update=update))


@dataclass(frozen=True)
class CalibrationSet:
    input_ids: np.ndarray  # [samples, seq_len] int64
    stats: CalibrationStats


def load_recipe(path: Path) -> LoadedRecipe:
    return LoadedRecipe(Path(path).stem, Path(path), load_yaml(path, "calibration recipe", Recipe))


def collect_text(source: TextSource, min_chars: int, file: Path) -> tuple[list[str], str]:
    """The documents of a text source (a calibration recipe's or an eval suite's, declared in `file`)
    after the length filter, and where they came from: the one text step both token pipelines share."""
    docs, where = read_documents(source, file.parent)
    docs = [d for d in docs if len(d.strip()) >= max(min_chars, 1)]
    if not docs:
        raise CalibrationError(f"{file}: no documents left after min_chars={min_chars} from {where}")
    return docs, where


def tokenize_documents(docs: list[str], join: str, tokenizer, desc: str = "tokenize") -> np.ndarray:
    """One id stream: each document tokenized with the separator appended (no BOS: windows cut anywhere)."""
    pieces = [d + join for d in docs[:-1]] + [docs[-1]]
    ids: list[int] = []
    batch = 256
    for start in bar(range(0, len(pieces), batch), desc=desc, unit="batch"):
        encoded = tokenizer(pieces[start : start + batch], add_special_tokens=False)["input_ids"]
        for row in encoded:
            ids.extend(row)
    return np.asarray(ids, dtype=np.int64)


def calibration_set(loaded: LoadedRecipe, tokenizer, tokenizer_hash: str) -> CalibrationSet:
    """Cached token windows for this recipe and tokenizer; builds them on a miss."""
    recipe = loaded.recipe
    docs, where = loaded.documents()
    text_hash = sha256_bytes(recipe.join.join(docs).encode("utf-8"))
    key = sha256_json({"recipe": recipe.model_dump(mode="json"), "tokenizer": tokenizer_hash, "text": text_hash})
    hit = load_tokens("calibration", key, CalibrationStats)
    if hit is not None:
        log.info("calibration %s: cache hit %s", loaded.name, short(key))
        return CalibrationSet(hit[0], hit[1])

    log.info("calibration %s: tokenizing %d documents from %s", loaded.name, len(docs), where)
    ids = tokenize_documents(docs, recipe.join, tokenizer, desc=f"tokenize {loaded.name}")
    windows = len(ids) // recipe.seq_len
    if windows < recipe.samples:
        need = recipe.samples * recipe.seq_len
        raise CalibrationError(
            f"{loaded.path}: {where} gives {len(ids):,} tokens ({windows} windows of {recipe.seq_len}) but "
            f"samples x seq_len needs {need:,}; fix: lower samples or seq_len, or add text"
        )
    chosen = sorted(random.Random(recipe.seed).sample(range(windows), recipe.samples))
    input_ids = np.stack([ids[i * recipe.seq_len : (i + 1) * recipe.seq_len] for i in chosen])
    stats = CalibrationStats(
        recipe=loaded.name,
        source=where,
        hash=key,
        documents=len(docs),
        characters=sum(len(d) for d in docs),
        tokens=int(len(ids)),
        samples=recipe.samples,
        seq_len=recipe.seq_len,
        seed=recipe.seed,
    )
    store_tokens("calibration", key, input_ids, stats)
    return CalibrationSet(input_ids, stats)


def load_tokens(kind: str, key: str, stats_type: type[StatsT]) -> tuple[np.ndarray, StatsT] | None:
    """A cached token array and its stats, or None."""
    folder = cache_dir() / kind
    tokens_file, stats_file = folder / f"{short(key)}.npy", folder / f"{short(key)}.json"
    if tokens_file.is_file() and stats_file.is_file():
        return np.load(tokens_file), stats_type.model_validate_json(stats_file.read_text())
    return None


def store_tokens(kind: str, key: str, array: np.ndarray, stats: BaseModel) -> None:
    """Tokens first, stats last (each atomically, under the entry's lock): stats present means complete tokens."""
    folder = cache_dir() / kind
    stats_file = folder / f"{short(key)}.json"
    with exclusive(stats_file):
        if stats_file.is_file():
            return  # another shard stored the same tokens while this one tokenized
        with atomic_target(folder / f"{short(key)}.npy") as tmp:
            np.save(tmp, array)
        write_atomic(stats_file, stats.model_dump_json(indent=2).encode())
