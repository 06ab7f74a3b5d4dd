"""Wall time and peak memory per stage, for report.json.

Peak RSS per stage uses Linux's resettable high-water mark (/proc/self/clear_refs "5"
resets VmHWM), so each stage's figure is its own, not the process's lifetime peak.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .records import StageMeasure

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _reset_peaks() -> None:
    try:
        _CLEAR.write_text("5")
    except OSError:
        pass
    cuda = _cuda()
    if cuda:
        cuda.reset_peak_memory_stats()


def _peak_rss() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda if torch.cuda.is_available() else None


class Stages:
    """Collects one StageMeasure per named stage."""

    def __init__(self) -> None:
        self.measures: dict[str, StageMeasure] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        _reset_peaks()
        start = time.perf_counter()
        try:
            yield
        finally:
            cuda = _cuda()
            self.measures[name] = StageMeasure(
                seconds=round(time.perf_counter() - start, 3),
                peak_rss_bytes=_peak_rss(),
                peak_cuda_bytes=cuda.max_memory_allocated() if cuda else None,
            )
