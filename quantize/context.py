"""One run's shared state, handed to every stage: the builder, the checker and the planner read it.

Why a separate object: the base model, its tokenizer, the calibration sets and the
planner are expensive and shared by every variant of a run; keeping them here (not in
the builder) lets `check` run without a builder and the stages stay independent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import formats
from .basemodel import ResolvedBase, resolve_base
from .calibration import CalibrationSet, ChatFormat, calibration_set, load_recipe
from .config import Project, Variant
from .outputs import variant_folder
from .plan import Planner


class RunContext:
    """The project, the output root, and (resolved once, on first use) the base model, tokenizer,
    calibration token sets and planner."""

    def __init__(self, project: Project, out_root: Path, force: bool = False):
        self.project, self.out_root, self.force = project, Path(out_root).resolve(), force
        self._base: ResolvedBase | None = None
        self._tokenizer: Any = None
        self._planner: Planner | None = None
        self._calibration: dict[tuple, CalibrationSet] = {}

    @property
    def base(self) -> ResolvedBase:
        if self._base is None:
            self._base = resolve_base(self.project)
        return self._base

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.base.path)
        return self._tokenizer

    def planner(self) -> Planner:
        if self._planner is None:
            self._planner = Planner(self.project, self.base.config, self.base.path)  # devices' GPU rule
        return self._planner

    def folder(self, variant: Variant) -> Path:
        return variant_folder(self.out_root, variant)

    def calibration(self, variant: Variant) -> CalibrationSet | None:
        """The variant's calibration tokens (GPTQ/AWQ: its recipe; GGUF: its imatrix recipe), shared by variants."""
        name = variant.calibration
        if name is None:
            return None
        overrides = formats.of(variant).calibration_overrides(variant.spec)
        key = (name, *overrides)
        if key not in self._calibration:
            recipe = load_recipe(self.project.recipe_path(name)).with_overrides(*overrides)
            chat = ChatFormat(self.project.config.prompt_template, self.project.config.system_prompt)
            self._calibration[key] = calibration_set(recipe, self.tokenizer(), self.base.tokenizer_hash, chat)
        return self._calibration[key]
