"""Wall time and peak memory per stage, for report.json.

A stage's peak RSS is sampled by a thread (every 20 ms) and completed by the process's
high-water mark (VmHWM) when the stage raised it, so short spikes that set a new process
peak are caught exactly. The high-water mark itself is never reset: `/usr/bin/time`, CI
and the kernel keep seeing the real peak of the whole process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .records import StageMeasure

_STATUS = Path("/proc/self/status")
_INTERVAL = 0.02


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field):
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


class _Sampler(threading.Thread):
    """The largest VmRSS seen while the stage runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = _status_kb("VmRSS:") or 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(_INTERVAL):
            self.peak = max(self.peak, _status_kb("VmRSS:") or 0)


class Stages:
    """Collects one StageMeasure per named stage."""

    def __init__(self) -> None:
        self.measures: dict[str, StageMeasure] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        cuda = _cuda()
        if cuda:
            cuda.reset_peak_memory_stats()
        hwm_before = _status_kb("VmHWM:")
        sampler = _Sampler()
        sampler.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            sampler.done.set()
            sampler.join()
            hwm_after = _status_kb("VmHWM:")
            peak = max(sampler.peak, _status_kb("VmRSS:") or 0)
            if hwm_before is not None and hwm_after is not None and hwm_after > hwm_before:
                peak = max(peak, hwm_after)  # this stage set a new process peak: that is its exact peak
            self.measures[name] = StageMeasure(
                seconds=round(time.perf_counter() - start, 3),
                peak_rss_bytes=peak or None,
                peak_cuda_bytes=cuda.max_memory_allocated() if cuda else None,
            )


def process_peak_rss() -> int | None:
    """The whole process's peak RSS so far (never reset)."""
    return _status_kb("VmHWM:")
