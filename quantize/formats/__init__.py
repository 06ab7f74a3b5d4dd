"""The format registry: format name -> the one `Format` that knows it.

Adding a format is a module (or package) beside these, implementing `base.Format`, and
one line in `_REGISTERED`; nothing outside this package asks which format it holds.
Modules here import their engines lazily, so reading a config or a report costs no torch.
"""

from __future__ import annotations

from .awq import AWQ
from .base import BuildJob, EngineResult, Format, Needs, PlanWork, Scorer
from .gguf import GGUF
from .gptq import GPTQ
from .mlx import MLX

_REGISTERED: tuple[Format, ...] = (GPTQ(), AWQ(), GGUF(), MLX())
FORMATS: dict[str, Format] = {f.name: f for f in _REGISTERED}


def names_text() -> str:
    """`gptq, awq, gguf or mlx`: the valid names, for messages."""
    names = list(FORMATS)
    return ", ".join(names[:-1]) + " or " + names[-1]


def get(name: str) -> Format:
    return FORMATS[name]


def of(variant) -> Format:
    return FORMATS[variant.spec.format]


__all__ = ["FORMATS", "names_text", "BuildJob", "EngineResult", "Format", "Needs", "PlanWork", "Scorer", "get", "of"]
