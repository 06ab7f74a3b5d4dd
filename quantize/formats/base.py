"""The one protocol every output format implements, so nothing outside `formats/` asks which format it holds.

A format's core is six answers: its names and branch, its file size, each build stage's
memory and disk, its build step, its loader for scoring, and which clients load its files
(plus `spec_type`, `name`, `title` and `engine_packages`). Everything else (calibration,
validation, plan wording, card sections, publish targets) is a capability with a default
here. A new format is one module (built in: one line in `formats/__init__.py`; outside
this package: an entry point in the `quantize.formats` group), as mergekit's merge methods are.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel

from ..basemodel import ResolvedBase
from ..calibration import CalibrationSet
from ..config import Project, Variant
from ..estimate import Estimator, Needs
from ..measure import Stages
from ..records import TensorMix
from .clients import Support, loading, table_rows
from .sections import QUALITY_HEAD, CardInputs, Row, base_quality, branch_cell, fetch_lines, gb, on_hub, quality, table

DEFAULT_RUN_SEQ_LEN = 4096  # the context `plan` sizes the run memory for, where a format has no length of its own


@dataclass
class EngineResult:
    """What a build step reports besides its files: where it ran and the engine's own loss log."""

    device: str
    dtype: str
    compute_dtype: str | None = None  # what the engine computed in, where it differs from the saved dtype
    module_losses: list[dict] = field(default_factory=list)
    mix: TensorMix | None = None  # for a file whose per-tensor types were chosen to a budget


@dataclass
class BuildJob:
    """Everything a format's build step may use; `out` is the staged folder the files go into."""

    project: Project
    variant: Variant
    base: ResolvedBase
    calibration: CalibrationSet | None
    out: Path
    stages: Stages
    planner: Estimator  # the run's planner: a stage whose dtype depends on memory decides as the plan did


class Scorer(Protocol):
    """A loaded variant as the checks use it: logits for token ids, greedy continuation, and (HF) the model."""

    model: Any  # the torch module when there is one (CUDA memory of a forward), else None

    def logits(self, window: np.ndarray) -> np.ndarray: ...

    def greedy(self, ids: list[int], max_new_tokens: int, stop: int | None, pad: int | None = None) -> list[int]: ...


@dataclass(frozen=True)
class PlanWork:
    """A variant's plan entry besides its size: the file it writes, the work it implies, its run length."""

    file: str
    work: str
    seq_len: int
    load_overhead: int = 0  # added to the file size for the memory to load it


class Format(ABC):
    """A format's core: what every format must answer. The rest of the class are capabilities
    with defaults (calibration, validation, plan presentation, card sections, publish targets),
    which a format overrides only where it differs; no flag stands in for such a switch."""

    name: ClassVar[str]  # as written in variants.yaml: `format: gptq`
    title: ClassVar[str]  # GPTQ: card titles and the repo suffix (`...-GPTQ`)
    spec_type: ClassVar[type[BaseModel]]
    engine_packages: ClassVar[tuple[str, ...]]  # versions that go into a variant's inputs hash
    # Further packages whose versions reports record (and cards may name) without changing the inputs hash.
    recorded_packages: ClassVar[tuple[str, ...]] = ()
    # Spec field -> the fix a config error on that field names (`variants[3].bits: ...; fix: use 4 or 8`).
    field_fixes: ClassVar[dict[str, str]] = {}
    family_rank: ClassVar[int] = 100  # where the card's "Repositories available" entry goes in the list
    plot_marker: ClassVar[str] = "x"  # the comparison plot's marker for this format's points
    # The card's `library_name`: the client the hub shows code for. Without it the hub guesses from the files, and
    # GGUF and MLX repos are meant to say so (mlx-lm writes `mlx` itself).
    library_name: ClassVar[str] = "transformers"

    # -- core ------------------------------------------------------------------------------------------------
    @abstractmethod
    def names(self, spec) -> tuple[str, str]:
        """(short name people type, hub branch)."""

    @abstractmethod
    def predict_bytes(self, planner: Estimator, spec) -> int | None:
        """The file size the build will write, from config.json (and tokenizer files) alone."""

    @abstractmethod
    def stage_needs(self, planner: Estimator, variant: Variant) -> dict[str, Needs]:
        """Each build stage's predicted peak (RAM, VRAM, disk), by stage name: what preflight checks."""

    @abstractmethod
    def build(self, job: BuildJob) -> EngineResult: ...

    @abstractmethod
    def load(self, folder: Path, variant: Variant, n_ctx: int, base_config: dict) -> Scorer:
        """The built files loaded as the checks score them."""

    @abstractmethod
    def support(self, spec) -> list[Support]:
        """Which clients load this file, as tested (formats/clients.py): the one source for plan and cards."""

    # -- config ------------------------------------------------------------------------------------------------
    def complete(self, spec, top_level: str):
        """The spec with defaults that depend on the project filled in (GGUF: the imatrix recipe); as is by default."""
        return spec

    def calibration(self, spec, top_level: str) -> str | None:
        """The calibration recipe this variant needs tokens from, if any: a spec with a `calibration` field
        takes its own or the project's; a spec without one (a data-free format) needs none."""
        if "calibration" not in type(spec).model_fields:
            return None
        return spec.calibration or top_level

    def calibration_overrides(self, spec) -> tuple[int | None, int | None]:
        """(samples, seq_len) overriding the recipe's."""
        return getattr(spec, "samples", None), getattr(spec, "seq_len", None)

    def needs_marked_default(self, variants: list) -> bool:
        """Whether these variants of one repo need one marked `default: true` (it goes on `main`):
        by default when there are several, as a repo's `main` holds one of them."""
        return len(variants) > 1

    def validate(self, spec, config: dict, config_file: Path, where: str, name: str) -> None:  # noqa: B027
        """Refuse, from config.json alone, what this format cannot build (before any work); none by default."""

    def memory_lever(self, spec) -> str:
        """A spec option that costs memory, named in preflight's fix (", set X: false"); "" when none."""
        return ""

    def engine_inputs(self, spec) -> dict[str, str]:
        """Extra inputs beyond package versions that change the bytes (converter versions...)."""
        return {}

    # -- plan --------------------------------------------------------------------------------------------------
    def plan_work(self, planner: Estimator, variant: Variant) -> PlanWork:
        """The plan row's file, work and run length: the branch folder, the engine, the default run length."""
        return PlanWork("(folder)", f"{self.title} build ({', '.join(self.engine_packages)})", DEFAULT_RUN_SEQ_LEN)

    def clients(self, spec) -> list[str]:
        """Clients a test saw load this file: what `plan` and the card may name."""
        return loading(self.support(spec))

    def runner(self, spec) -> str:
        """`gpu` when the build runs a model forward, `cpu` when it does not."""
        return "gpu"

    def plan_location(self, variant: Variant, file: str) -> str:
        return variant.branch + (" (+main)" if variant.default else "")

    def load_note(self) -> str:
        """What `plan`'s legend says this format adds to the file size for LOAD; "" when nothing."""
        return ""

    def max_ram(self, load_bytes: int | None) -> int | None:
        """The "Max RAM required" a card states for a file; None where publishers state none (all but GGUF)."""
        return None

    # -- card and publish --------------------------------------------------------------------------------------
    @property
    def family_line(self) -> str:
        """The card's "Repositories available" entry."""
        return f"{self.title} models"

    def card_tags(self, rows: list[Row]) -> list[str]:
        return [self.name, "quantized"]

    def card_engine(self, rows: list[Row]) -> str:
        """`gptqmodel 7.7.0`: what made the files (as their reports record), for the card's description."""
        versions = rows[0].report.versions
        return " + ".join(f"{p} {versions.get(p, '(unrecorded)')}" for p in self.engine_packages)

    def card_provided(self, c: CardInputs) -> str:
        """The files table: one row per branch, with its size and the checks' figures."""
        head = ["Branch", "Size", "BPW", "Loads in", *QUALITY_HEAD]
        figures = base_quality(c)
        base = None if figures is None else ["unquantized", "-", "16", "-", *figures]
        rows = [
            [
                branch_cell(c, r.variant),
                gb(r.size),
                f"{r.report.bits_per_weight:.2f}",
                ", ".join(self.clients(r.variant.spec)),
                *quality(r),
            ]
            for r in sorted(c.rows, key=lambda r: (not r.variant.default, r.report.bits_per_weight))
        ]
        return f"## Provided files\n\n{table(head, base, rows)}"

    def card_download(self, c: CardInputs) -> str:
        """How to download one branch with the hub's own client."""
        repo = c.repo
        example = next((r.variant.branch for r in c.rows if not r.variant.default), c.rows[0].variant.branch)
        return "\n".join(
            [
                "## How to download from branches",
                "",
                "```shell",
                *fetch_lines(c, example, f"--revision {example} --local-dir {repo.split('/')[-1]}-{example}"),
                "```",
                *on_hub(
                    c,
                    "",
                    f"With huggingface_hub older than 1.0: `{c.links.download_env}huggingface-cli download {repo} "
                    f"--revision {example} --local-dir {repo.split('/')[-1]}-{example}`.",
                ),
            ]
        )

    def card_usage(self, c: CardInputs) -> str:
        """Which clients load the files, as tested."""
        rows = table_rows(self.support(c.rows[0].variant.spec))
        return "## Compatibility\n\n" + table(["Client", "Loads", "Checked with", "Note"], None, rows)

    def targets(self, variant: Variant) -> list[tuple[str, bool]]:
        """(branch, exclusive) the variant is published to: its own branch, and `main` for the default."""
        return [(variant.branch, True)] + ([("main", True)] if variant.default else [])
