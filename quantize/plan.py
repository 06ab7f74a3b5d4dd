"""`plan`: what every variant will cost and who can load it, before any GPU hour is spent.

Reads only config.json (and tokenizer files for the exact GGUF header, when present):
file size and bits per weight from each format's layout (sizes.py), memory to load and
to run at the variant's sequence length, client compatibility, and the calibration work
the matrix implies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import formats
from .calibration import load_recipe
from .config import Project, Variant
from .errors import EngineError
from .sizes import param_count


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
        }


def kv_cache_bytes(config: dict, seq_len: int) -> int:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv = config.get("num_key_value_heads") or heads
    return 2 * config["num_hidden_layers"] * kv * head_dim * seq_len * 2  # K and V, fp16


def workspace_bytes(config: dict, seq_len: int) -> int:
    """One forward at batch 1: fp32 logits plus one layer's fp16 activations (attention and MLP)."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    return seq_len * config["vocab_size"] * 4 + seq_len * (4 * hidden + 3 * inter) * 2


class Planner:
    """Predictions for one project's variants, from the base model's config.json."""

    def __init__(self, project: Project, config: dict, model_dir: Path | None = None):
        self.project, self.config, self.model_dir = project, config, model_dir
        self.params = param_count(config)
        self.cache: dict = {}  # per-format shared work (GGUF: one skeleton dry run for every type)

    def predicted_bytes(self, variant: Variant) -> int | None:
        return formats.of(variant).predict_bytes(self, variant.spec)

    def recipe(self, name: str):
        return load_recipe(self.project.recipe_path(name)).recipe

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
        )

    def rows(self, variants: list[Variant]) -> list[PlanRow]:
        return [self.row(v) for v in variants]


def _gb(value: int | None) -> str:
    return "?" if value is None else f"{value / 1e9:.2f}"


def format_table(rows: list[PlanRow], params: int) -> str:
    header = ("VARIANT", "BRANCH / FILE", "BPW", "SIZE GB", "LOAD GB", "RUN GB", "SEQ", "CLIENTS", "WORK")
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
                ", ".join(r.clients),
                r.work,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
    return (
        f"{text}\n\n{params / 1e9:.2f} B parameters. LOAD = weights in memory (GGUF: file + 2.5 GB, "
        "as publishers state max RAM); RUN = LOAD + fp16 KV cache + one forward's workspace at SEQ."
    )


def plan_json(rows: list[PlanRow]) -> str:
    return json.dumps([r.as_dict() for r in rows], indent=2)
