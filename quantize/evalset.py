"""Evaluation text: one token stream per (eval recipe, tokenizer), cut into windows of n_ctx.

Every format is scored on these exact ids (llama.cpp is fed ids, never text), so the
numbers of a GPTQ, an AWQ and a GGUF variant are comparable with each other and with
the base model. Cached by content hash like calibration tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from . import resources
from .calibration import collect_text, load_tokens, store_tokens, tokenize_documents
from .config import SafeName, Strict, load_yaml
from .errors import CalibrationError, ConfigError
from .hashing import sha256_bytes, sha256_json
from .records import EvalStats
from .textsource import TextSource

log = logging.getLogger(__name__)


class EvalRecipe(Strict):
    """`eval/NAME.yaml`: where the held-out text comes from and how much of it to score."""

    kind: Literal["text"] = "text"
    description: str = ""
    source: TextSource
    join: str = "\n\n"
    min_chars: int = Field(0, ge=0)
    n_ctx: int = Field(512, gt=1)
    max_windows: int = Field(16, gt=0, description="score at most this many windows (the first ones)")


class ChatRecipe(Strict):
    """`eval/NAME.yaml` with `kind: chat`: conversations scored on their assistant turns.

    The conversations are a smoke suite's prompts rendered through the template, each answered by
    the base model's own greedy reply: the reference is on the model's distribution (a written
    answer would measure how the base disagrees with its author, not what quantization lost)."""

    kind: Literal["chat"]
    description: str = ""
    suite: SafeName | None = Field(None, description="the smoke suite in eval/ whose prompts are asked; the project's")
    max_new_tokens: int = Field(96, gt=0, le=1024, description="length of the base's replies, the scored turns")


@dataclass(frozen=True)
class EvalSet:
    windows: np.ndarray  # [n, n_ctx] int64
    stats: EvalStats


def find_eval(root: Path, name: str) -> Path:
    found = resources.find("eval", name, root)
    if found is not None:
        return found
    raise ConfigError(root, "eval", f"no eval/{name}.yaml", "add the file or name an existing one")


def load_eval(path: Path) -> EvalRecipe:
    return load_yaml(path, "eval recipe", EvalRecipe)


def load_chat_eval(path: Path) -> ChatRecipe:
    return load_yaml(path, "chat eval recipe", ChatRecipe)


def eval_set(path: Path, tokenizer, tokenizer_hash: str) -> EvalSet:
    recipe = load_eval(path)
    docs, where = collect_text(recipe.source, recipe.min_chars, path)
    key = sha256_json(
        {
            "eval": recipe.model_dump(mode="json"),
            "tokenizer": tokenizer_hash,
            "text": sha256_bytes(recipe.join.join(docs).encode()),
        }
    )
    hit = load_tokens("eval", key, EvalStats)
    if hit is not None:
        return EvalSet(*hit)
    # Tokenize only what the windows need (about 8 characters a token is ample), not a whole corpus.
    need_chars, count, chars = 8 * recipe.n_ctx * recipe.max_windows, 0, 0
    while count < len(docs) and chars < need_chars:
        chars += len(docs[count]) + len(recipe.join)
        count += 1
    ids = tokenize_documents(docs[:count], recipe.join, tokenizer, desc=f"tokenize {path.stem}")
    n = min(recipe.max_windows, len(ids) // recipe.n_ctx)
    if n < 1:
        raise CalibrationError(
            f"{path}: {where} gives {len(ids):,} tokens, fewer than one window of n_ctx={recipe.n_ctx}"
        )
    windows = ids[: n * recipe.n_ctx].reshape(n, recipe.n_ctx)
    stats = EvalStats(
        eval=path.stem,
        source=where,
        hash=key,
        windows=n,
        n_ctx=recipe.n_ctx,
        scored_tokens=n * (recipe.n_ctx - recipe.n_ctx // 2 - 1),
    )
    store_tokens("eval", key, windows, stats)
    return EvalSet(windows, stats)
