"""Logging and progress bars: every long step says what it does and how long is left."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("httpx", "httpx2", "urllib3", "filelock", "datasets", "huggingface_hub", "gguf"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if _no_progress():
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # uploads and downloads too


def _no_progress() -> bool:
    return os.environ.get("QUANTIZE_NO_PROGRESS", "") not in ("", "0")


def bar(items: Iterable[T], desc: str, unit: str = "it", total: int | None = None) -> Iterable[T]:
    """A tqdm bar with ETA on stderr; plain log lines instead when QUANTIZE_NO_PROGRESS is set (CI logs)."""
    return tqdm(items, desc=desc, unit=unit, total=total, disable=_no_progress(), leave=False, dynamic_ncols=True)


@contextmanager
def engine_output_to_stderr() -> Iterator[None]:
    """Send what engines print (gptqmodel's tables and logs) to stderr, at the file-descriptor level.

    stdout carries our results (`list`, `plan --json`, `matrix`, the result table): hundreds of
    engine lines there would bury them. Engines keep their own handles on stdout, so swapping
    `sys.stdout` is not enough: fd 1 itself points at stderr for the block.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
