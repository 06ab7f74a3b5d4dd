"""`plan`: what every variant will cost and who can load it, before any GPU hour is spent.

Reads only config.json (and tokenizer files for the exact GGUF header, when present):
file size and bits per weight from each format's layout (sizes.py), memory to load and
to run at the variant's sequence length, client compatibility, and the calibration work
the matrix implies.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import formats, shapes, tables
from .calibration import load_recipe
from .config import Project, Variant
from .errors import EngineError
from .formats import Needs
from .sizes import model_tensors, param_count


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


def kv_cache_bytes(config: dict, seq_len: int) -> int:
    heads = config["num_attention_heads"]
    head_dim = shapes.head_dim(config)
    kv = config.get("num_key_value_heads") or heads
    return 2 * config["num_hidden_layers"] * kv * head_dim * seq_len * 2  # K and V, fp16


def workspace_bytes(config: dict, seq_len: int) -> int:
    """One forward at batch 1: fp32 logits plus one layer's fp16 activations (attention and MLP)."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    return seq_len * config["vocab_size"] * 4 + seq_len * (4 * hidden + 3 * inter) * 2


# RSS of a Python process with torch, transformers and gptqmodel imported (bench/memory.py: 0.84 GB),
# added to every stage's RAM: what the machine must have besides the stage's own buffers.
PROCESS_RSS = int(0.9e9)


class Planner:
    """Predictions for one project's variants, from the base model's config.json."""

    def __init__(self, project: Project, config: dict, model_dir: Path | None = None, gpu: bool | None = None):
        self.project, self.config, self.model_dir = project, config, model_dir
        self.params = param_count(config)
        self.fp16_bytes = 2 * self.params
        # Cheap and torch-free: plan must stay a config.json read. The builder passes what torch says.
        self.gpu = (
            Path("/proc/driver/nvidia/gpus").is_dir() and any(Path("/proc/driver/nvidia/gpus").iterdir())
            if gpu is None
            else gpu
        )
        self.cache: dict = {}  # per-format shared work (GGUF: one skeleton dry run for every type)

    def layer_bytes(self, bytes_per_param: int) -> int:
        """One decoder layer's weights at this precision (the streaming stages hold one at a time)."""
        per_layer = [t.numel for t in model_tensors(self.config) if ".layers.0." in t.name]
        return bytes_per_param * sum(per_layer)

    def stream_needs(self, rows: int, seq_len: int) -> Needs:
        """The unquantized model streamed layer by layer (streaming.py) over `rows` x `seq_len` tokens:
        one layer (as read, 16-bit, and as computed), the batch's hidden states in and out and the MLP's
        intermediate activations, the embedding and the head, and one window's logits. At 7B on a CPU this
        predicts 4.1 GB for 8 x 512 tokens where 4.5 GB was measured (bench/full7b.py)."""
        hidden, vocab = self.config["hidden_size"], self.config["vocab_size"]
        width = 2 if self.gpu else 4  # half precision on a GPU, float32 on a CPU
        states = 2 * rows * seq_len * hidden * width + 3 * rows * seq_len * self.config["intermediate_size"] * width
        head = 2 * vocab * hidden * width + seq_len * vocab * 4
        layer = self.layer_bytes(width) + (self.layer_bytes(2) if width != 2 else 0)
        if self.gpu:
            return Needs(ram=head, vram=layer + states)
        return Needs(ram=layer + states + head)

    def check_needs(self, file_bytes: int) -> Needs:
        """The check: the base reference streamed over the eval windows, then the variant loaded and scored."""
        from .checks.evalset import find_eval, load_eval

        recipe = load_eval(find_eval(self.project.root, self.project.config.evaluation))
        base = self.stream_needs(recipe.max_windows, recipe.n_ctx)
        variant = file_bytes + kv_cache_bytes(self.config, recipe.n_ctx) + workspace_bytes(self.config, recipe.n_ctx)
        if self.gpu:
            return Needs(ram=base.ram, vram=max(base.vram, variant))
        return Needs(ram=max(base.ram, variant))

    def stage_needs(self, variant: Variant) -> dict[str, Needs]:
        return formats.of(variant).stage_needs(self, variant)

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
        f"{text}\n\n{params / 1e9:.2f} B parameters. LOAD = weights in memory (GGUF: file + 2.5 GB, "
        "as publishers state max RAM); RUN = LOAD + fp16 KV cache + one forward's workspace at SEQ; PEAK = the "
        "build's largest predicted memory, RAM with the Python process's own 0.9 GB (VRAM on a GPU), and its "
        "stage (`plan --json` has every stage, with disk), which `build` checks against the machine first."
    )


def plan_json(rows: list[PlanRow]) -> str:
    return json.dumps([r.as_dict() for r in rows], indent=2)


def preflight(planner: Planner, variants: list[Variant], out_root: Path, cache: Path) -> None:
    """Refuse, before any work, a build whose predicted peak RAM, VRAM or disk exceeds what this machine has."""
    import shutil

    from .errors import PreflightError

    available_ram = _available_ram()
    total_vram = _total_vram() if planner.gpu else None
    disk = {
        "out": (out_root, shutil.disk_usage(_existing(out_root)).free),
        "cache": (cache, shutil.disk_usage(_existing(cache)).free),
    }
    need_out = need_cache = 0
    for variant in variants:
        lever = formats.of(variant).memory_lever(variant.spec)
        fix = (
            f"lower samples or seq_len for it{lever}, free memory or disk, use a larger machine, or pass --no-preflight"
        )
        for stage, needs in planner.stage_needs(variant).items():
            ram = needs.ram + PROCESS_RSS
            if available_ram is not None and ram > available_ram:
                raise PreflightError(
                    f"{variant.name}: stage {stage} needs about {ram / 1e9:.1f} GB of RAM but "
                    f"{available_ram / 1e9:.1f} GB is available",
                    fix=fix,
                )
            if total_vram is not None and needs.vram > total_vram:
                raise PreflightError(
                    f"{variant.name}: stage {stage} needs about {needs.vram / 1e9:.1f} GB of GPU "
                    f"memory but the GPU has {total_vram / 1e9:.1f} GB",
                    fix=fix,
                )
            need_out += needs.disk_out
            need_cache = max(need_cache, needs.disk_cache)  # cache entries (the F16 GGUF) are shared
    for where, need in (("out", need_out), ("cache", need_cache)):
        folder, free = disk[where]
        if need > free:
            raise PreflightError(
                f"{folder}: the selected variants need about {_size(need)} there but "
                f"{_size(free)} is free on that disk",
                fix="free space, or move it (--out for outputs, QUANTIZE_CACHE for the cache)",
            )


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def _available_ram() -> int | None:
    """MemAvailable (what can be allocated without swapping), or None off Linux."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _total_vram() -> int | None:
    import torch

    return torch.cuda.mem_get_info()[1] if torch.cuda.is_available() else None
