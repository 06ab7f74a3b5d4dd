"""`build`: calibrate -> quantize -> report for each selected variant, resumably.

A variant's folder is recognised as finished when its report.json carries the same
inputs hash (base model, calibration tokens, parameters, engine versions); it is then
skipped. Work happens in a staged temporary folder that is swapped into place only when
complete, so a killed build leaves nothing that looks finished.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .basemodel import ResolvedBase, resolve_base
from .calibration import CalibrationSet, calibration_set, load_recipe
from .config import Project, Variant
from .errors import QuantizeError
from .awq import quantize_awq
from .gptq import quantize_gptq
from .hashing import sha256_json, short
from .measure import Stages
from .outputs import list_files
from .paths import clean_stale_partials, require_free_space, staged_folder
from .report import BaseModelInfo, Inputs, Report, VariantInfo, now, package_versions, python_version, read_report
from .shapes import check_group_size

log = logging.getLogger(__name__)

# Bump when the files this code writes change for the same inputs, so old outputs rebuild.
OUTPUT_LAYOUT = 1

ENGINES = {"gptq": quantize_gptq, "awq": quantize_awq}


@dataclass(frozen=True)
class BuildOutcome:
    variant: Variant
    folder: Path
    status: str  # "built" | "up to date"
    report: Report


class Builder:
    """Builds variants of one project, sharing the base model and calibration sets across them."""

    def __init__(self, project: Project, out_root: Path, force: bool = False):
        self.project, self.out_root, self.force = project, Path(out_root).resolve(), force
        self._base: ResolvedBase | None = None
        self._tokenizer = None
        self._calibration: dict[tuple, CalibrationSet] = {}

    @property
    def base(self) -> ResolvedBase:
        if self._base is None:
            self._base = resolve_base(self.project)
        return self._base

    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.base.path)
        return self._tokenizer

    def validate(self, variants: list[Variant]) -> None:
        """Everything that can be refused from config.json alone, for all variants, before any work."""
        config = self.base.config
        for variant in variants:
            if variant.format not in ENGINES:
                raise QuantizeError(f"{self.project.path}: variant {variant.name}: {variant.format} builds are not "
                                    f"available yet (this version builds {', '.join(ENGINES)})")
            check_group_size(config, variant.spec.group_size, str(self.project.path), variant.name)

    def calibration(self, variant: Variant) -> CalibrationSet:
        spec = variant.spec
        key = (variant.calibration, spec.samples, spec.seq_len)
        if key not in self._calibration:
            recipe = load_recipe(self.project.recipe_path(variant.calibration)).with_overrides(spec.samples, spec.seq_len)
            self._calibration[key] = calibration_set(recipe, self.tokenizer(), self.base.tokenizer_hash)
        return self._calibration[key]

    def inputs(self, variant: Variant, calib: CalibrationSet) -> Inputs:
        versions = package_versions()
        engine = {k: versions.get(k, "?") for k in ("gptqmodel", "torch", "transformers")}
        engine["layout"] = str(OUTPUT_LAYOUT)
        return Inputs(
            base_model=BaseModelInfo(source=self.base.source, hash=self.base.hash, revision=self.base.revision),
            calibration=calib.stats, params=variant.params(), engine=engine,
        )

    def build_all(self, variants: list[Variant]) -> list[BuildOutcome]:
        self.validate(variants)
        return [self.build(v) for v in variants]

    def build(self, variant: Variant) -> BuildOutcome:
        folder = self.out_root / variant.branch
        for leftover in clean_stale_partials(folder):
            log.info("%s: removed %s left by an interrupted build", variant.name, leftover.name)
        stages = Stages()
        with stages.stage("calibrate"):
            calib = self.calibration(variant)
        inputs = self.inputs(variant, calib)
        inputs_hash = sha256_json(inputs.model_dump(mode="json"))
        previous = read_report(folder)
        if previous is not None and previous.inputs_hash == inputs_hash and not self.force:
            log.info("%s: up to date (inputs %s), skipping; --force rebuilds", variant.name, short(inputs_hash))
            return BuildOutcome(variant, folder, "up to date", previous)

        needed = int(self.base.weights_bytes() * (variant.spec.bits / 16 + 0.15)) + (64 << 20)
        require_free_space(self.out_root, needed, f"variant {variant.name}")
        log.info("%s: building into %s (inputs %s)", variant.name, folder, short(inputs_hash))
        with staged_folder(folder) as tmp:
            with stages.stage("quantize"):
                result = ENGINES[variant.format](self.base.path, variant.spec, calib.input_ids, tmp)
            files = list_files(tmp)
            report = Report(
                variant=VariantInfo.of(variant), inputs_hash=inputs_hash, inputs=inputs,
                versions={**package_versions(), "quantize": __version__}, python=python_version(),
                device=result.device, dtype=result.dtype, created_at=now(), stages=stages.measures, files=files,
                total_bytes=sum(f.size for f in files), module_losses=result.module_losses,
            )
            report.write(tmp)
        log.info("%s: built, %.1f MB in %.0f s", variant.name, report.total_bytes / 1e6,
                 sum(m.seconds for m in stages.measures.values()))
        return BuildOutcome(variant, folder, "built", report)
