"""Perplexity and KL divergence on llama.cpp's protocol, for HF and GGUF models alike.

Each window of n_ctx ids is evaluated from scratch; positions n_ctx/2 .. n_ctx-2 predict
the second half, as `llama-perplexity` scores. A chat set names its own scored tokens
instead (the assistant turns of each conversation, `positions`). The base model's side is kept compactly
per scored position: the log-probability of the true next token (exact perplexity), and
its top-K log-probabilities plus the mass of the rest (KL divergence summed over the
top-K and one tail bucket: a lower bound that is tight when the base's distribution is
concentrated, which is what separates Q8_0 from Q6_K). Cached per (base, eval set).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from .progress import bar

log = logging.getLogger(__name__)

TOP_K = 64
LogitsFn = Callable[[np.ndarray], np.ndarray]  # window ids [n_ctx] -> logits [n_ctx, vocab]


@dataclass
class Reference:
    """The base model's compact log-probabilities on the scored positions."""

    target_lp: np.ndarray  # [positions]
    top_ids: np.ndarray  # [positions, K] int32, best first
    top_lp: np.ndarray  # [positions, K]

    def save(self, path: Path) -> None:
        np.savez(path, target_lp=self.target_lp, top_ids=self.top_ids, top_lp=self.top_lp)

    def scores(self) -> Scores:
        """The base model's own perplexity, from the exact target log-probabilities kept here."""
        mean_nll = float(-self.target_lp.mean())
        return Scores(ppl=math.exp(mean_nll), mean_nll=mean_nll, tokens=int(self.target_lp.size))

    @classmethod
    def load(cls, path: Path) -> Reference:
        with np.load(path) as data:
            return cls(data["target_lp"], data["top_ids"], data["top_lp"])


class Scores(BaseModel):
    ppl: float
    mean_nll: float
    tokens: int
    mean_kld: float | None = None
    p99_kld: float | None = None
    top1_agreement: float | None = None


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _scored(window: np.ndarray, logits: np.ndarray, scored: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(log-probs at the predicting positions, the tokens they predict): the second half, or the `scored` tokens."""
    if scored is None:
        first = len(window) // 2
        return _log_softmax(logits[first:-1]), window[first + 1 :]
    at = np.flatnonzero(scored)
    return _log_softmax(logits[at - 1]), window[at]


def _check_positions(windows: np.ndarray, positions: np.ndarray | None) -> None:
    if positions is not None:
        assert positions.shape == windows.shape and not positions[:, 0].any(), "token 0 has no prediction to score"


def reference(
    windows: np.ndarray, logits_fn: LogitsFn, k: int = TOP_K, positions: np.ndarray | None = None
) -> Reference:
    """The base's compact log-probs; `positions` ([n, n_ctx] bool: which tokens are scored) for a chat set."""
    _check_positions(windows, positions)
    targets, ids, lps = [], [], []
    for i, window in enumerate(bar(windows, desc="base log-probs", unit="window")):
        lp, nxt = _scored(window, logits_fn(window), None if positions is None else positions[i])
        part = np.argpartition(-lp, k, axis=-1)[:, :k]  # top-K unordered, then order just those
        top = np.take_along_axis(part, np.argsort(-np.take_along_axis(lp, part, axis=-1), axis=-1), axis=-1)
        targets.append(lp[np.arange(len(nxt)), nxt])
        ids.append(top.astype(np.int32))
        lps.append(np.take_along_axis(lp, top, axis=-1))
    return Reference(np.concatenate(targets), np.concatenate(ids), np.concatenate(lps))


def _tail_log(lp_top: np.ndarray) -> np.ndarray:
    """log(1 - sum(exp(top))) per row, kept finite when the top-K holds all the mass."""
    rest = 1.0 - np.exp(lp_top).sum(axis=-1)
    return np.log(np.clip(rest, 1e-12, None))


def score(
    windows: np.ndarray,
    logits_fn: LogitsFn,
    ref: Reference | None = None,
    desc: str = "score",
    positions: np.ndarray | None = None,
) -> Scores:
    """Perplexity of a model, and its KL divergence from `ref` when given (on the same `positions`).

    With `positions` a window is evaluated only up to its last scored token: attention is causal,
    so the padding after a conversation changes no scored logit, and llama.cpp and MLX are spared it."""
    _check_positions(windows, positions)
    nll, klds, agree, offset = [], [], [], 0
    for i, window in enumerate(bar(windows, desc=desc, unit="window")):
        scored = None if positions is None else positions[i]
        if scored is not None:
            end = int(np.flatnonzero(scored)[-1]) + 1
            window, scored = window[:end], scored[:end]
        lp, nxt = _scored(window, logits_fn(window), scored)
        n = len(nxt)
        nll.append(-lp[np.arange(n), nxt])
        if ref is not None:
            rows = slice(offset, offset + n)
            p_lp = ref.top_lp[rows]
            q_lp = np.take_along_axis(lp, ref.top_ids[rows].astype(np.int64), axis=-1)
            p_tail, q_tail = _tail_log(p_lp), _tail_log(q_lp)
            kld = (np.exp(p_lp) * (p_lp - q_lp)).sum(-1) + np.exp(p_tail) * (p_tail - q_tail)
            klds.append(np.maximum(kld, 0.0))
            agree.append(lp.argmax(-1) == ref.top_ids[rows, 0])
            offset += n
    mean_nll = float(np.concatenate(nll).mean())
    out = Scores(ppl=math.exp(mean_nll), mean_nll=mean_nll, tokens=int(sum(len(x) for x in nll)))
    if ref is not None:
        all_kld = np.concatenate(klds)
        out.mean_kld = float(all_kld.mean())
        out.p99_kld = float(np.percentile(all_kld, 99))
        out.top1_agreement = float(np.concatenate(agree).mean())
    return out


class HFScorer:
    """A transformers checkpoint (unquantized, GPTQ or AWQ) as the checks use it."""

    def __init__(self, model_dir: Path, device: str = "cpu", dtype=None, **load_kwargs):
        from transformers import AutoModelForCausalLM

        kwargs = {"device_map": device, **load_kwargs}
        if dtype is not None:
            kwargs["dtype"] = dtype
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
        self.model.eval()

    def logits(self, window: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            ids = torch.from_numpy(window).unsqueeze(0).to(self.model.device)
            return self.model(ids).logits[0].float().cpu().numpy()

    def greedy(self, ids: list[int], max_new_tokens: int, stop: int | None, pad: int | None = None) -> list[int]:
        """Greedy continuation; generation stops at the model's own end tokens (its generation config)."""
        return self.greedy_batch([ids], max_new_tokens, stop, pad)[0]

    def greedy_batch(
        self, prompts: list[list[int]], max_new_tokens: int, stop: int | None, pad: int | None = None
    ) -> list[list[int]]:
        """Greedy continuations of several prompts in one left-padded batch, each cut after its first `stop`.

        One forward per new token for the whole suite: a GPTQ 8-bit kernel that dequantizes its weights on
        every call spent 12 s per 48-token reply one prompt at a time on 2 cores."""
        import torch

        pad_id = (stop if pad is None else pad) or 0
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        with torch.no_grad():
            # transformers types generate's self as a protocol its own auto-model return type does not match
            out = self.model.generate(  # type: ignore[misc]
                ids.to(self.model.device),
                attention_mask=mask.to(self.model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
        ends = self.model.generation_config.eos_token_id
        ends = {stop, *(ends if isinstance(ends, list) else [ends])} - {None}
        cut = []
        for row in out:
            new = row[width:].tolist()
            end = next((j for j, t in enumerate(new) if t in ends), None)  # a finished row is padded after its end
            cut.append(new if end is None else new[: end + 1])
        return cut


def hf_logits_fn(model_dir: Path, device: str = "cpu", dtype=None, **load_kwargs) -> LogitsFn:
    """A LogitsFn over a transformers checkpoint (tests and benches compare against it)."""
    return HFScorer(model_dir, device, dtype, **load_kwargs).logits
