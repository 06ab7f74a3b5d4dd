"""The base model's own replies to a smoke suite, and the chat eval built from them.

Both are computed once per (base model, suite, template, reply length) and cached beside the
base reference: the smoke gate compares every variant's reply with the base's, and the chat
eval scores every variant on the base's conversations (prompt in the template, the base's
greedy reply as the assistant turn), on the assistant tokens alone.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from ..devices import has_cuda
from ..estimate import REPLY_BATCH
from ..hashing import sha256_bytes, sha256_json, short
from ..paths import cache_dir, compute_once, write_json
from ..progress import bar
from ..records import ChatStats, Reply
from ..scoring import HFScorer
from .smoke import SmokePrompt, reply_problems

log = logging.getLogger(__name__)

SKIPPED_HISTORY = "a multi-turn prompt and the tokenizer ships no chat template"


BATCH = REPLY_BATCH  # prompts per batched generation (transformers): a forward per token for eight


def ask(scorer, asked: Sequence[list[int] | None], max_new_tokens: int, tokenizer, desc: str) -> list[list[int] | None]:
    """Greedy continuations of each prompt's ids (raw: the stop token kept when generation stopped on it).

    A scorer that generates in batches (transformers) is asked BATCH prompts at a time, the others
    (llama.cpp, mlx-lm) one by one; the base model's replies come from the same batched path."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = tokenizer.eos_token_id
    todo = [i for i, ids in enumerate(asked) if ids is not None]
    out: list[list[int] | None] = [None] * len(asked)
    if hasattr(scorer, "greedy_batch"):
        for start in bar(range(0, len(todo), BATCH), desc=desc, unit="batch"):
            chunk = todo[start : start + BATCH]
            for i, new in zip(chunk, scorer.greedy_batch([asked[i] for i in chunk], max_new_tokens, stop, pad)):
                out[i] = [int(t) for t in new]
    else:
        for i in bar(todo, desc=desc, unit="prompt"):
            out[i] = [int(t) for t in scorer.greedy(asked[i], max_new_tokens, stop=stop, pad=pad)]
    return out


def to_reply(prompt: SmokePrompt, raw: list[int] | None, max_new_tokens: int, tokenizer, template: str) -> Reply:
    """One prompt's reply as the smoke check judges it: its first `max_new_tokens`, cut at the end token."""
    if raw is None:
        return Reply(prompt=prompt.prompt, kind=prompt.kind, reply="", problems=[], skipped=SKIPPED_HISTORY)
    raw = raw[:max_new_tokens]
    eos = tokenizer.eos_token_id
    new = raw[: raw.index(eos)] if eos in raw else raw
    text = tokenizer.decode(new, skip_special_tokens=False)
    return Reply(
        prompt=prompt.prompt, kind=prompt.kind, reply=text, ids=raw, problems=reply_problems(text, new, template)
    )


def base_answers(base, asked: Sequence[list[int] | None], max_new_tokens: int, tokenizer) -> list[list[int] | None]:
    """The unquantized model's greedy replies (raw ids), cached under the base, the prompts' ids and the length.

    Generated in the checkpoint's own dtype (bfloat16 for zephyr and SmolLM2), whole: 1.0x the
    fp16 model, within the memory rule at 7B, and the precision people run the base model in.
    Greedy decoding is a prefix property: the first 48 tokens of a 96-token reply are the 48-token
    reply, so the smoke check and the chat eval share one generation."""
    import torch

    key = short(
        sha256_json(
            {
                "base": base.hash,
                "ids": [list(a) if a is not None else None for a in asked],
                "tokens": max_new_tokens,
                "batch": BATCH,
                "transformers": metadata.version("transformers"),
                "torch": torch.__version__,
            }
        )
    )
    path = cache_dir() / "replies" / f"{key}.json"

    def make(tmp: Path) -> None:
        dtype = base.config.get("dtype") or base.config.get("torch_dtype") or "float32"
        log.info("base replies: %d prompts, %d tokens each, %s", len(asked), max_new_tokens, dtype)
        scorer = HFScorer(base.path, "cuda" if has_cuda() else "cpu", dtype=getattr(torch, dtype))
        try:
            write_json(tmp, ask(scorer, asked, max_new_tokens, tokenizer, desc="base replies"))
        finally:
            del scorer
            gc.collect()

    path.parent.mkdir(parents=True, exist_ok=True)
    if not compute_once(path, make):
        log.info("base replies: cache hit %s", key)
    return json.loads(path.read_text())


@dataclass(frozen=True)
class ChatSet:
    windows: np.ndarray  # [conversations, width] int64, right-padded
    positions: np.ndarray  # [conversations, width] bool: the assistant tokens scored
    stats: ChatStats


def chat_set(
    name: str,
    suite: str,
    asked: Sequence[list[int] | None],
    answers: Sequence[list[int] | None],
    max_new_tokens: int,
    pad: int,
) -> ChatSet | None:
    """Each asked prompt followed by the base's reply (its end token included: ending the turn is part
    of chatting); the reply's tokens are scored. None when no prompt has a reply to score."""
    pairs = [(p, a[:max_new_tokens]) for p, a in zip(asked, answers) if p is not None and a]
    if not pairs:
        return None
    width = max(len(p) + len(a) for p, a in pairs)
    windows = np.full((len(pairs), width), pad, dtype=np.int64)
    positions = np.zeros((len(pairs), width), dtype=bool)
    for i, (p, a) in enumerate(pairs):
        windows[i, : len(p) + len(a)] = p + a
        positions[i, len(p) : len(p) + len(a)] = True
    digest = sha256_bytes(windows.tobytes() + positions.tobytes())
    stats = ChatStats(
        eval=name,
        suite=suite,
        hash=digest,
        conversations=len(pairs),
        n_ctx=width,
        scored_tokens=int(positions.sum()),
    )
    return ChatSet(windows, positions, stats)
