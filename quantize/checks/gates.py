"""Quality gates per format (`eval/gates.yaml`): a variant that fails one is never published."""

from __future__ import annotations

from typing import Literal

from pydantic import RootModel, model_validator

from .. import formats
from ..config import FieldProblem, Strict, load_yaml
from ..records import Verdict


class Gate(Strict):
    max_ppl_ratio: float | None = None
    max_mean_kld: float | None = None
    min_top1: float | None = None
    max_memory_gb: float | None = None  # measured peak (CUDA when present, else RSS of the check)
    smoke: Literal["required", "report"] = "required"


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


def judge(
    gate: Gate,
    ppl_ratio: float,
    mean_kld: float,
    top1: float,
    memory_gb: float | None,
    smoke_problems: list[str],
    template_problem: str | None,
) -> list[Verdict]:
    """One verdict per configured gate; the chat-template match is always judged (a wrong
    template invalidates every reply and every card that quotes it)."""
    out = []
    for name, limit, value, ok in (
        ("max_ppl_ratio", gate.max_ppl_ratio, ppl_ratio, lambda v, lim: v <= lim),
        ("max_mean_kld", gate.max_mean_kld, mean_kld, lambda v, lim: v <= lim),
        ("min_top1", gate.min_top1, top1, lambda v, lim: v >= lim),
        ("max_memory_gb", gate.max_memory_gb, memory_gb, lambda v, lim: v <= lim),
    ):
        if limit is not None:
            out.append(Verdict(gate=name, limit=limit, value=value, passed=value is not None and ok(value, limit)))
    out.append(
        Verdict(gate="chat_template", limit="matches", value=template_problem or "ok", passed=template_problem is None)
    )
    out.append(
        Verdict(
            gate="smoke",
            limit=gate.smoke,
            value="; ".join(smoke_problems) or "ok",
            passed=gate.smoke == "report" or not smoke_problems,
        )
    )
    return out
