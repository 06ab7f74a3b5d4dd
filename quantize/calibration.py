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
from string import Formatter
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, Field, field_validator

from .config import Strict, load_yaml
from .errors import CalibrationError
from .hashing import sha256_bytes, sha256_json, short
from .paths import atomic_target, cache_dir, exclusive, write_atomic
from .progress import bar
from .records import CalibrationStats
from .textsource import Record, TextSource, read_records

log = logging.getLogger(__name__)

StatsT = TypeVar("StatsT", bound=BaseModel)


class ChatMix(Strict):
    """Part of the samples as conversations rendered through the project's `prompt_template`: an instruct
    model is run on its template, so its calibration should see the template's tokens and the reply position
    too (bench/README.md section 8 measures what it changes)."""

    fraction: float = Field(gt=0, le=1, description="share of the samples that are conversations")
    prompt: str = Field(
        min_length=1,
        description="the user's turn, filled from each record's fields; the record's text is the reply, "
        "e.g. 'Tell me about {title}.'",
    )

    @field_validator("prompt")
    @classmethod
    def _fields_only(cls, value: str) -> str:
        try:
            names = [name for _, name, _, _ in Formatter().parse(value) if name is not None]
        except ValueError as err:
            raise ValueError(f"prompt is not a format string ({err}); write literal braces as {{{{ }}}}") from None
        if any(not name.isidentifier() for name in names):
            raise ValueError("prompt fields must be plain record field names, e.g. {title}")
        return value

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for _, name, _, _ in Formatter().parse(self.prompt) if name))


@dataclass(frozen=True)
class ChatFormat:
    """The project's prompt template and default system prompt, which chat calibration renders through."""

    template: str
    system: str


class Recipe(Strict):
    """A calibration recipe file (`calibration/NAME.yaml`)."""

    description: str = ""
    source: TextSource
    join: str = Field(default="\n\n", description="separator placed between documents")
    min_chars: int = Field(default=0, ge=0, description="documents shorter than this are dropped")
    samples: int = Field(default=128, gt=0)
    seq_len: int = Field(default=4096, gt=0)
    seed: int = 0
    chat: ChatMix | None = Field(None, description="render part of the samples as conversations")


@dataclass(frozen=True)
class LoadedRecipe:
    name: str
    path: Path
    recipe: Recipe

    def documents(self) -> tuple[list[str], str]:
        return collect_text(self.recipe.source, self.recipe.min_chars, self.path)

    def records(self) -> tuple[list[Record], str]:
        """The documents with the fields the chat prompt needs (none without `chat`), read once."""
        fields = self.recipe.chat.fields if self.recipe.chat else ()
        return collect_records(self.recipe.source, self.recipe.min_chars, self.path, fields)

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
    records, where = collect_records(source, min_chars, file, ())
    return [r[source.text_field] for r in records], where


def collect_records(
    source: TextSource, min_chars: int, file: Path, fields: tuple[str, ...]
) -> tuple[list[Record], str]:
    """`collect_text` with each document's extra `fields` kept beside its text."""
    records, where = read_records(source, file.parent, fields)
    records = [r for r in records if len(r[source.text_field].strip()) >= max(min_chars, 1)]
    if not records:
        raise CalibrationError(f"{file}: no documents left after min_chars={min_chars} from {where}")
    return records, where


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


def calibration_set(
    loaded: LoadedRecipe, tokenizer, tokenizer_hash: str, chat_format: ChatFormat | None = None
) -> CalibrationSet:
    """Cached token windows for this recipe and tokenizer; builds them on a miss."""
    recipe = loaded.recipe
    if recipe.chat is not None and chat_format is None:
        raise CalibrationError(f"{loaded.path}: `chat` needs the project's prompt_template, and none was given")
    records, where = loaded.records()
    docs = [r[recipe.source.text_field] for r in records]
    chats = conversations(records, recipe, chat_format, tokenizer) if chat_format and recipe.chat else []
    text_hash = sha256_bytes(recipe.join.join(docs).encode("utf-8"))
    parts_of_key: dict[str, object] = {"tokenizer": tokenizer_hash, "text": text_hash}
    if chats:  # the rendered conversations carry the template, the system prompt and the records' fields
        parts_of_key |= {"recipe": recipe.model_dump(mode="json"), "chat": sha256_bytes("".join(chats).encode())}
    else:  # the key a recipe had before `chat` existed, so its cached tokens stay valid
        parts_of_key["recipe"] = recipe.model_dump(mode="json", exclude={"chat"})
    key = sha256_json(parts_of_key)
    hit = load_tokens("calibration", key, CalibrationStats)
    if hit is not None:
        log.info("calibration %s: cache hit %s", loaded.name, short(key))
        return CalibrationSet(hit[0], hit[1])

    log.info("calibration %s: tokenizing %d documents from %s", loaded.name, len(docs), where)
    n_chat = 0 if recipe.chat is None else max(1, round(recipe.samples * recipe.chat.fraction))
    rng = random.Random(recipe.seed)
    parts, tokens = [], 0
    if n_chat < recipe.samples:
        ids = tokenize_documents(docs, recipe.join, tokenizer, desc=f"tokenize {loaded.name}")
        parts.append(_windows(ids, recipe.samples - n_chat, recipe.seq_len, rng, loaded.path, where))
        tokens += len(ids)
    if n_chat:
        chat_ids = tokenize_documents(chats, "", tokenizer, desc=f"tokenize {loaded.name} conversations")
        parts.append(_windows(chat_ids, n_chat, recipe.seq_len, rng, loaded.path, f"{where} as conversations"))
        tokens += len(chat_ids)
    stats = CalibrationStats(
        recipe=loaded.name,
        source=where,
        hash=key,
        documents=len(docs),
        characters=sum(len(d) for d in docs),
        tokens=tokens,
        samples=recipe.samples,
        seq_len=recipe.seq_len,
        seed=recipe.seed,
        chat_samples=n_chat,
    )
    input_ids = np.concatenate(parts)
    store_tokens("calibration", key, input_ids, stats)
    return CalibrationSet(input_ids, stats)


def conversations(records: list[Record], recipe: Recipe, chat_format: ChatFormat, tokenizer) -> list[str]:
    """Each record as one conversation: the prompt template around the record's prompt, the record's text as
    the reply, closed by the tokenizer's end-of-sequence token as the model's own replies are."""
    assert recipe.chat is not None
    end = tokenizer.eos_token or ""
    out = []
    for record in records:
        turn = chat_format.template.format(system=chat_format.system, prompt=recipe.chat.prompt.format(**record))
        out.append(turn + record[recipe.source.text_field] + end)
    return out


def _windows(ids: np.ndarray, count: int, seq_len: int, rng: random.Random, path: Path, where: str) -> np.ndarray:
    """`count` non-overlapping windows of `seq_len` from one token stream, drawn with `rng`."""
    windows = len(ids) // seq_len
    if windows < count:
        raise CalibrationError(
            f"{path}: {where} gives {len(ids):,} tokens ({windows} windows of {seq_len}) but {count} samples x "
            f"seq_len needs {count * seq_len:,}; fix: lower samples or seq_len, or add text"
        )
    chosen = sorted(rng.sample(range(windows), count))
    return np.stack([ids[i * seq_len : (i + 1) * seq_len] for i in chosen])


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
