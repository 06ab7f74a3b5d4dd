"""Preflight: refuse, before any work, a build this machine cannot hold (RAM, GPU memory, disk).

Apart from `plan` (which predicts and presents): this is the one place that reads the
machine; the GPU answer is the planner's, which is devices' one rule.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import formats
from .config import Variant
from .errors import PreflightError
from .estimate import PROCESS_RSS
from .plan import Planner


def preflight(planner: Planner, variants: list[Variant], out_root: Path, cache: Path) -> None:
    """Refuse, before any work, a build whose predicted peak RAM, VRAM or disk exceeds what this machine has."""
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
    import torch  # only where devices.has_cuda() said there is a GPU

    return torch.cuda.mem_get_info()[1] if torch.cuda.is_available() else None
