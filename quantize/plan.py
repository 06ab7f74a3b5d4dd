"""`plan`: what every variant will cost and who can load it, before any GPU hour is spent.

Reads only config.json (and tokenizer files for the exact GGUF header, when present):
file size and bits per weight from each format's layout (sizes.py), memory to load and
to run at the variant's sequence length, client compatibility, and the calibration work
the matrix implies.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from . import formats, tables
from .basemodel import resolve_config
from .config import Project, Variant
from .errors import EngineError
from .estimate import PROCESS_RSS, Estimator, Needs, kv_cache_bytes, workspace_bytes


@dataclass
class PlanRow:
    variant: Variant
    file: str
    bytes: int | None
    bits_per_weight: float | None
    seq_len: int
    load_bytes: int | None
    run_bytes: int | None
    clients: list[str]
    work: str
    runner: str
    notes: list[str] = field(default_factory=list)
    stages: dict[str, Needs] = field(default_factory=dict)

    @property
    def peak(self) -> tuple[str, Needs] | None:
        """The stage with the largest RAM (or, on a GPU, VRAM) need."""
        if not self.stages:
            return None
        return max(self.stages.items(), key=lambda kv: max(kv[1].ram, kv[1].vram))

    def as_dict(self) -> dict:
        return {
            "variant": self.variant.name,
            "branch": self.variant.branch,
            "format": self.variant.format,
            "file": self.file,
            "predicted_bytes": self.bytes,
            "bits_per_weight": self.bits_per_weight,
            "seq_len": self.seq_len,
            "load_bytes": self.load_bytes,
            "run_bytes": self.run_bytes,
            "clients": self.clients,
            "work": self.work,
            "runner": self.runner,
            "notes": self.notes,
            "stages": {name: asdict(needs) for name, needs in self.stages.items()},
        }


class Planner(Estimator):
    """Predictions for one project's variants, from the base model's config.json: the formats' answers, as rows."""

    def __init__(self, *args: Any, **kwargs: Any):
        """Estimator's arguments (project, config, model_dir, and the machine a test may pin: gpu, bf16)."""
        super().__init__(*args, **kwargs)
        self._needs: dict[tuple[str, str], dict[str, Needs]] = {}

    @classmethod
    def for_project(cls, project: Project) -> Planner:
        """The planner `plan` and `matrix` use: config.json (and tokenizer files) only, no weights fetched."""
        config, folder = resolve_config(project)
        return cls(project, config, folder)

    def stage_needs(self, variant: Variant) -> dict[str, Needs]:
        """The format's answer, asked once per variant: preflight, the plan row and the builder's disk
        check before each variant share it (GGUF's costs a skeleton dry run and an eval-set load)."""
        key = (variant.name, variant.branch)
        if key not in self._needs:
            self._needs[key] = formats.of(variant).stage_needs(self, variant)
        return self._needs[key]

    def predicted_bytes(self, variant: Variant) -> int | None:
        return formats.of(variant).predict_bytes(self, variant.spec)

    def row(self, variant: Variant) -> PlanRow:
        fmt = formats.of(variant)
        notes: list[str] = []
        try:
            size = self.predicted_bytes(variant)
        except EngineError as err:
            size, notes = None, [str(err)]
        work = fmt.plan_work(self, variant)
        load = None if size is None else size + work.load_overhead
        run = (
            None
            if load is None
            else load + kv_cache_bytes(self.config, work.seq_len) + workspace_bytes(self.config, work.seq_len)
        )
        bpw = None if size is None else round(8 * size / self.params, 2)
        return PlanRow(
            variant,
            work.file,
            size,
            bpw,
            work.seq_len,
            load,
            run,
            fmt.clients(variant.spec),
            work.work,
            fmt.runner(variant.spec),
            notes,
            self.stage_needs(variant),
        )

    def rows(self, variants: list[Variant]) -> list[PlanRow]:
        return [self.row(v) for v in variants]


def _gb(value: int | None) -> str:
    return "?" if value is None else f"{value / 1e9:.2f}"


def _peak(row: PlanRow) -> str:
    peak = row.peak
    if peak is None:
        return "?"
    stage, needs = peak
    if needs.vram > needs.ram:
        return f"{needs.vram / 1e9:.2f} ({stage}, VRAM)"
    return f"{(needs.ram + PROCESS_RSS) / 1e9:.2f} ({stage})"


def format_table(rows: list[PlanRow], params: int) -> str:
    header = (
        "VARIANT",
        "BRANCH / FILE",
        "BPW",
        "SIZE GB",
        "LOAD GB",
        "RUN GB",
        "SEQ",
        "PEAK GB (STAGE)",
        "CLIENTS",
        "WORK",
    )
    lines = [header]
    for r in rows:
        where = formats.of(r.variant).plan_location(r.variant, r.file)
        lines.append(
            (
                r.variant.name,
                where,
                "?" if r.bits_per_weight is None else f"{r.bits_per_weight:.2f}",
                _gb(r.bytes),
                _gb(r.load_bytes),
                _gb(r.run_bytes),
                str(r.seq_len),
                _peak(r),
                ", ".join(r.clients),
                r.work,
            )
        )
    text = tables.aligned(lines)
    return (
        f"{text}\n\n{params / 1e9:.2f} B parameters. LOAD = weights in memory{_load_notes()}; "
        "RUN = LOAD + fp16 KV cache + one forward's workspace at SEQ; PEAK = the build's largest predicted "
        "memory, RAM with the Python process's own 0.9 GB (VRAM on a GPU), and its "
        "stage (`plan --json` has every stage, with disk), which `build` checks against the machine first."
    )


def _load_notes() -> str:
    """What formats add to a file's size for the memory to load it (GGUF: as publishers state max RAM)."""
    notes = [note for fmt in formats.FORMATS.values() if (note := fmt.load_note())]
    return f" ({'; '.join(notes)})" if notes else ""


def plan_json(rows: list[PlanRow]) -> str:
    return json.dumps([r.as_dict() for r in rows], indent=2)
