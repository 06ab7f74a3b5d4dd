"""Quality gates per format (`eval/gates.yaml`): a variant that fails one is never published."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, model_validator

from .config import FieldProblem, Strict, load_yaml


class Gate(Strict):
    max_ppl_ratio: float | None = None
    max_mean_kld: float | None = None
    min_top1: float | None = None
    max_memory_gb: float | None = None  # measured peak (CUDA when present, else RSS of the check)
    smoke: Literal["required", "report"] = "required"


class Gates(Strict):
    gptq: Gate = Gate()
    awq: Gate = Gate()
    gguf: Gate = Gate()

    @model_validator(mode="after")
    def _some_gate(self) -> "Gates":
        """A gates file that names no format would judge nothing: refuse it rather than pass everything."""
        if not self.model_fields_set:
            raise FieldProblem("no format has gates", "set limits under gptq, awq or gguf, e.g. `gguf: {max_ppl_ratio: 1.2}`")
        return self


class Verdict(BaseModel):
    gate: str
    limit: float | str
    value: float | str | None
    passed: bool


def load_gates(path) -> Gates:
    return load_yaml(path, "gates file", Gates)


def judge(gate: Gate, ppl_ratio: float, mean_kld: float, top1: float, memory_gb: float | None,
          smoke_problems: list[str], template_problem: str | None) -> list[Verdict]:
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
    out.append(Verdict(gate="chat_template", limit="matches", value=template_problem or "ok",
                       passed=template_problem is None))
    out.append(Verdict(gate="smoke", limit=gate.smoke, value="; ".join(smoke_problems) or "ok",
                       passed=gate.smoke == "report" or not smoke_problems))
    return out
