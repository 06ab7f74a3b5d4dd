"""Quality gates per format (`eval/gates.yaml`): a variant that fails one is never published."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, RootModel, model_validator

from .. import formats
from ..config import FieldProblem, Strict, load_yaml
from ..records import Reply, Verdict
from .smoke import REPETITION, kind_of


class Gate(Strict):
    max_ppl_ratio: float | None = None
    max_mean_kld: float | None = None
    min_top1: float | None = None
    max_chat_kld: float | None = None  # mean KLD on the chat eval's assistant tokens
    max_memory_gb: float | None = None  # measured peak (CUDA when present, else RSS of the check)
    smoke: Literal["required", "report"] = "required"
    # Prompts on which the variant may repeat itself where the base model does not. An empty reply or a
    # leaked role marker the base does not share is never tolerated: those are broken files, not weak spots.
    smoke_tolerance: int = Field(default=0, ge=0)


class Gates(RootModel[dict[str, Gate]]):
    """format name -> its gate; a format the file does not name is judged on the template and smoke chat only."""

    @model_validator(mode="after")
    def _known_formats(self) -> Gates:
        unknown = sorted(set(self.root) - set(formats.FORMATS))
        if unknown:
            raise FieldProblem(f"unknown format {unknown[0]!r}", f"use {formats.names_text()}")
        if not self.root:  # a gates file that names no format would judge nothing: refuse it, do not pass everything
            raise FieldProblem(
                "no format has gates", f"set limits under {formats.names_text()}, e.g. `gguf: {{max_ppl_ratio: 1.2}}`"
            )
        return self

    def get(self, fmt: str) -> Gate:
        return self.root.get(fmt, Gate())


def load_gates(path) -> Gates:
    return load_yaml(path, "gates file", Gates)


def smoke_verdict(gate: Gate, replies: list[Reply]) -> Verdict:
    """The smoke gate: a count of prompts where the variant has a problem the base's reply has not.

    Repetition may regress on up to `smoke_tolerance` prompts (greedy decoding of a small model
    tips into a loop on a near tie, a flip of one token); any other new problem fails at once."""
    regressed = [r for r in replies if r.new_problems]
    hard = [r for r in regressed if any(kind_of(p) != REPETITION for p in r.new_problems)]
    value = "; ".join(f"{r.prompt!r}: {', '.join(r.new_problems)}" for r in regressed)
    passed = not hard and len(regressed) <= gate.smoke_tolerance
    return Verdict(
        gate="smoke",
        limit=gate.smoke if gate.smoke == "report" else f"at most {gate.smoke_tolerance} repetition regressions",
        value=f"{len(regressed)} of {len(replies)} regress: {value}" if regressed else "ok",
        passed=gate.smoke == "report" or passed,
    )


def judge(
    gate: Gate,
    ppl_ratio: float,
    mean_kld: float,
    top1: float,
    memory_gb: float | None,
    replies: list[Reply],
    template_problem: str | None,
    chat_kld: float | None = None,
) -> list[Verdict]:
    """One verdict per configured gate; the chat-template match is always judged (a wrong
    template invalidates every reply and every card that quotes it)."""
    out = []
    for name, limit, value, ok in (
        ("max_ppl_ratio", gate.max_ppl_ratio, ppl_ratio, lambda v, lim: v <= lim),
        ("max_mean_kld", gate.max_mean_kld, mean_kld, lambda v, lim: v <= lim),
        ("min_top1", gate.min_top1, top1, lambda v, lim: v >= lim),
        ("max_chat_kld", gate.max_chat_kld, chat_kld, lambda v, lim: v <= lim),
        ("max_memory_gb", gate.max_memory_gb, memory_gb, lambda v, lim: v <= lim),
    ):
        if limit is not None:
            out.append(Verdict(gate=name, limit=limit, value=value, passed=value is not None and ok(value, limit)))
    out.append(
        Verdict(gate="chat_template", limit="matches", value=template_problem or "ok", passed=template_problem is None)
    )
    out.append(smoke_verdict(gate, [r for r in replies if r.skipped is None]))
    return out
