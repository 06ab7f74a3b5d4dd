"""The one protocol every output format implements, so nothing outside `formats/` asks which format it holds.

A format is a spec model (its fields in variants.yaml), its names and branches, its size
and memory prediction, its build step, its loader for scoring, its card sections and its
publish targets. Stages call these hooks; a new format is one module and one registry line
(`formats/__init__.py`), as mergekit's merge methods are.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel

if TYPE_CHECKING:
    from ..card import CardInputs, Row
    from ..config import Project, Variant
    from ..measure import Stages
    from ..plan import Planner
    from .clients import Support


@dataclass
class EngineResult:
    """What a build step reports besides its files: where it ran and the engine's own loss log."""

    device: str
    dtype: str
    module_losses: list[dict] = field(default_factory=list)
    mix: Any = None  # records.TensorMix, for a file whose per-tensor types were chosen to a budget


@dataclass
class BuildJob:
    """Everything a format's build step may use; `out` is the staged folder the files go into."""

    project: Project
    variant: Variant
    base: Any  # basemodel.ResolvedBase
    calibration: Any  # calibration.CalibrationSet | None
    out: Path
    stages: Stages


class Scorer(Protocol):
    """A loaded variant as the checks use it: logits for token ids, greedy continuation, and (HF) the model."""

    model: Any  # the torch module when there is one (CUDA memory of a forward), else None

    def logits(self, window: np.ndarray) -> np.ndarray: ...

    def greedy(self, ids: list[int], max_new_tokens: int, stop: int | None, pad: int | None = None) -> list[int]: ...


@dataclass(frozen=True)
class Needs:
    """One stage's predicted peak: RAM, VRAM (when on a GPU) and disk it writes (out/ or the cache)."""

    ram: int = 0
    vram: int = 0
    disk_out: int = 0
    disk_cache: int = 0


@dataclass(frozen=True)
class PlanWork:
    """A variant's plan entry besides its size: the file it writes, the work it implies, its run length."""

    file: str
    work: str
    seq_len: int
    load_overhead: int = 0  # added to the file size for the memory to load it


class Format(ABC):
    name: ClassVar[str]  # as written in variants.yaml: `format: gptq`
    title: ClassVar[str]  # GPTQ: card titles and the repo suffix (`...-GPTQ`)
    spec_type: ClassVar[type[BaseModel]]
    engine_packages: ClassVar[tuple[str, ...]]  # versions that go into a variant's inputs hash
    family_line: ClassVar[str]  # the card's "Repositories available" entry
    family_rank: ClassVar[int]  # where that entry goes in the list
    plot_marker: ClassVar[str]
    needs_default: ClassVar[bool] = True  # several variants need one marked default (it goes on `main`)

    # -- names and config --------------------------------------------------------------------------------------
    @abstractmethod
    def names(self, spec) -> tuple[str, str]:
        """(short name people type, hub branch)."""

    def complete(self, spec, top_level: str):
        """The spec with defaults that depend on the project filled in (GGUF: the imatrix recipe); as is by default."""
        return spec

    def calibration(self, spec, top_level: str) -> str | None:
        """The calibration recipe this variant needs tokens from, if any."""
        return spec.calibration or top_level

    def calibration_overrides(self, spec) -> tuple[int | None, int | None]:
        """(samples, seq_len) overriding the recipe's."""
        return spec.samples, spec.seq_len

    def validate(self, spec, config: dict, config_file: Path, where: str, name: str) -> None:  # noqa: B027
        """Refuse, from config.json alone, what this format cannot build (before any work); none by default."""

    def memory_lever(self, spec) -> str:
        """A spec option that costs memory, named in preflight's fix (", set X: false"); "" when none."""
        return ""

    def engine_inputs(self, spec) -> dict[str, str]:
        """Extra inputs beyond package versions that change the bytes (converter versions...)."""
        return {}

    # -- plan ----------------------------------------------------------------------------------------------------
    @abstractmethod
    def predict_bytes(self, planner: Planner, spec) -> int | None:
        """The file size the build will write, from config.json (and tokenizer files) alone."""

    @abstractmethod
    def plan_work(self, planner: Planner, variant: Variant) -> PlanWork: ...

    @abstractmethod
    def stage_needs(self, planner: Planner, variant: Variant) -> dict[str, Needs]:
        """Each build stage's predicted peak (RAM, VRAM, disk), by stage name: what preflight checks."""

    @abstractmethod
    def support(self, spec) -> list[Support]:
        """Which clients load this file, as tested (formats/clients.py): the one source for plan and cards."""

    def clients(self, spec) -> list[str]:
        """Clients a test saw load this file: what `plan` and the card may name."""
        from .clients import loading

        return loading(self.support(spec))

    def runner(self, spec) -> str:
        """`gpu` when the build runs a model forward, `cpu` when it does not."""
        return "gpu"

    def plan_location(self, variant: Variant, file: str) -> str:
        return variant.branch + (" (+main)" if variant.default else "")

    # -- build and check -----------------------------------------------------------------------------------------
    @abstractmethod
    def build(self, job: BuildJob) -> EngineResult: ...

    @abstractmethod
    def load(self, folder: Path, variant: Variant, n_ctx: int, base_config: dict) -> Scorer:
        """The built files loaded as the checks score them."""

    max_ram_is_load: ClassVar[bool] = False  # cards state "Max RAM required" (GGUF) from the load prediction

    # -- card and publish ----------------------------------------------------------------------------------------
    @abstractmethod
    def card_tags(self, rows: list[Row]) -> list[str]: ...

    @abstractmethod
    def card_engine(self, rows: list[Row]) -> str:
        """`gptqmodel 7.7.0`: what made the files (as their reports record), for the card's description."""

    @abstractmethod
    def card_provided(self, c: CardInputs) -> str: ...

    @abstractmethod
    def card_download(self, c: CardInputs) -> str: ...

    @abstractmethod
    def card_usage(self, c: CardInputs) -> str: ...

    def targets(self, variant: Variant) -> list[tuple[str, bool]]:
        """(branch, exclusive) the variant is published to: its own branch, and `main` for the default."""
        return [(variant.branch, True)] + ([("main", True)] if variant.default else [])
