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

from . import __version__, formats
from .basemodel import ResolvedBase
from .calibration import CalibrationSet
from .checks.checker import Checker, run_check
from .config import Variant
from .context import RunContext
from .devices import this_machine
from .errors import DamagedOutput, EngineError
from .formats import BuildJob, EngineResult
from .hashing import sha256_json, short
from .measure import Stages
from .outputs import built_report, list_files, model_bytes
from .paths import cache_dir, clean_stale_partials, require_free_space, staged_folder
from .preflight import preflight
from .progress import engine_output_to_stderr
from .records import BaseModelInfo, Inputs, Report, VariantInfo, now, package_versions, python_version

log = logging.getLogger(__name__)

# Bump when the files this code writes change for the same inputs, so old outputs rebuild.
OUTPUT_LAYOUT = 1


@dataclass(frozen=True)
class BuildOutcome:
    variant: Variant
    folder: Path
    status: str  # "built" | "up to date"
    report: Report


class Builder:
    """The quantize stage: builds variants of one run (`RunContext`), resumably, then hands them to the checks."""

    def __init__(self, ctx: RunContext, check: bool = True, preflight: bool = True):
        self.ctx, self.run_checks, self.preflight = ctx, check, preflight
        self.project, self.out_root, self.force = ctx.project, ctx.out_root, ctx.force
        self._checker: Checker | None = None
        self._damaged: set[str] = set()  # variants whose damage was already logged

    @property
    def base(self) -> ResolvedBase:
        return self.ctx.base

    def validate(self, variants: list[Variant]) -> None:
        """What config.json and the weights' headers can refuse, for all variants, before any work."""
        config = self.base.config
        self.base.check_weights()
        for variant in variants:
            formats.of(variant).validate(
                variant.spec, config, self.base.path / "config.json", str(self.project.path), variant.name
            )

    def inputs(self, variant: Variant, calib: CalibrationSet | None) -> Inputs:
        fmt = formats.of(variant)
        versions = package_versions(fmt.engine_packages)
        engine = {k: versions.get(k, "?") for k in fmt.engine_packages}
        engine["layout"] = str(OUTPUT_LAYOUT)
        engine.update(fmt.engine_inputs(variant.spec))
        return Inputs(
            base_model=BaseModelInfo(source=self.base.source, hash=self.base.hash, revision=self.base.revision),
            calibration=calib.stats if calib else None,
            params=variant.params(),
            engine=engine,
        )

    def _run_engine(self, variant: Variant, calib: CalibrationSet | None, tmp: Path, stages: Stages) -> EngineResult:
        return formats.of(variant).build(
            BuildJob(self.project, variant, self.base, calib, tmp, stages, self.ctx.planner())
        )

    def _predicted_bytes(self, variant: Variant) -> int | None:
        try:
            return self.ctx.planner().predicted_bytes(variant)
        except EngineError as err:  # a prediction must never fail a finished build
            log.warning("%s: no size prediction: %s", variant.name, err)
            return None

    def _needed_bytes(self, variant: Variant) -> int:
        """What the variant writes under the output root: the preflight's own disk figure (plan's stage needs),
        checked again just before the build because earlier variants of the run used some of it."""
        needs = self.ctx.planner().stage_needs(variant)  # the planner keeps preflight's answer
        return sum(n.disk_out for n in needs.values()) + (64 << 20)

    def build_all(self, variants: list[Variant]) -> list[BuildOutcome]:
        self.validate(variants)
        if self.preflight:
            todo = [v for v in variants if self.force or not self._up_to_date_guess(v)]
            preflight(self.ctx.planner(), todo, self.out_root, cache_dir())
        outcomes = []
        for variant in variants:
            outcome = self.build(variant)
            if self.run_checks:
                if self._checker is None:
                    self._checker = Checker(self.ctx)
                checked = run_check(self._checker, variant, outcome.report)
                outcome = BuildOutcome(outcome.variant, outcome.folder, outcome.status, checked)
            outcomes.append(outcome)
        return outcomes

    def _up_to_date_guess(self, variant: Variant) -> bool:
        """A finished report exists (its inputs are rechecked by `build`): such variants need no room."""
        report = self._previous(variant)
        return report is not None and report.status == "passed"

    def _previous(self, variant: Variant) -> Report | None:
        """The last build's report; a damaged folder counts as none (it is rebuilt, which is its fix), said once."""
        try:
            return built_report(self.ctx.out_root, variant)
        except DamagedOutput as err:
            if variant.name not in self._damaged:
                self._damaged.add(variant.name)
                log.warning("%s: %s: %s; building it again", variant.name, err.path, err.problem)
            return None

    def build(self, variant: Variant) -> BuildOutcome:
        folder = self.ctx.folder(variant)
        for leftover in clean_stale_partials(folder):
            log.info("%s: removed %s left by an interrupted build", variant.name, leftover.name)
        stages = Stages()
        with stages.stage("calibrate"):
            calib = self.ctx.calibration(variant)
        inputs = self.inputs(variant, calib)
        inputs_hash = sha256_json(inputs.model_dump(mode="json"))
        previous = self._previous(variant)
        if previous is not None and previous.inputs_hash == inputs_hash and not self.force:
            log.info("%s: up to date (inputs %s), skipping; --force rebuilds", variant.name, short(inputs_hash))
            return BuildOutcome(variant, folder, "up to date", previous)

        require_free_space(self.out_root, self._needed_bytes(variant), f"variant {variant.name}")
        log.info("%s: building into %s (inputs %s)", variant.name, folder, short(inputs_hash))
        with staged_folder(folder) as tmp:
            machine = this_machine()  # before the engine, which may change torch's thread count
            with engine_output_to_stderr():
                result = self._run_engine(variant, calib, tmp, stages)
            files = list_files(tmp)
            report = Report(
                variant=VariantInfo(
                    name=variant.name,
                    branch=variant.branch,
                    format=variant.format,
                    repo=variant.repo,
                    default=variant.default,
                    params=variant.params(),
                ),
                inputs_hash=inputs_hash,
                inputs=inputs,
                versions={**package_versions(formats.recorded_packages(variant)), "quantize": __version__},
                python=python_version(),
                device=result.device,
                machine=machine,
                dtype=result.dtype,
                compute_dtype=result.compute_dtype,
                created_at=now(),
                stages=stages.measures,
                files=files,
                total_bytes=sum(f.size for f in files),
                module_losses=result.module_losses,
                mix=result.mix,
                bits_per_weight=round(8 * model_bytes(files) / self.base.param_count(), 3),
                predicted_bytes=self._predicted_bytes(variant),
            )
            report.write(tmp)
        log.info(
            "%s: built, %.1f MB in %.0f s",
            variant.name,
            report.total_bytes / 1e6,
            sum(m.seconds for m in stages.measures.values()),
        )
        return BuildOutcome(variant, folder, "built", report)
