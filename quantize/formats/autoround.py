"""AutoRound (Intel's `auto-round`): tuned rounding and scales, exported in the GPTQ v1 or AutoAWQ GEMM layout.

Why a second engine for the same layouts: AutoRound learns each weight's rounding and each
group's scale by sign-gradient descent on a block's output, which gptqmodel's GPTQ and AWQ
solvers do not; the file it exports is the same layout every GPTQ/AWQ reader loads, so the
choice changes quality and build time, never compatibility. The format modules publish their
own configs over AutoRound's (which carry its tuning metadata and no damping that applies).

AutoRound keeps the model in bfloat16 (on a CPU too: its `amp`, the default) and tunes one block
at a time, saving each as it is done; each step runs a `batch_size` slice of the calibration
windows forward and backward through the block. It runs in this process like gptqmodel: the
stage's memory is measured as every other engine's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..config import Strict
from ..devices import compute_device
from ..errors import EngineError
from .base import EngineResult, Needs
from .weightfolder import engine_config, finish_folder

log = logging.getLogger(__name__)

PACKAGE = "auto-round"
STREAM_ENV = "AR_DISK_STREAM_MODEL"
ENGINE_LOGGER = "autoround"  # auto_round.logger's name
# What auto-round's imports add to the process plan already counts: SmolLM2's AutoRound builds peaked 0.13 to
# 0.24 GB above the other terms (1.88 / 1.91 GB measured, bench/README.md section 8).
IMPORTS = int(0.25e9)
Method = Literal["gptq", "awq"]  # the export: AutoGPTQ's layout or AutoAWQ's
STREAMED: dict[str, bool] = {"gptq": True, "awq": False}  # see _streamed


class AutoRoundSpec(Strict):
    """`autoround: {iters: 50}` on a GPTQ or AWQ variant: AutoRound instead of gptqmodel's solver."""

    iters: int = Field(
        200,
        ge=1,
        description="tuning steps per block (AutoRound's default 200; each is one batch forward and backward)",
    )
    batch_size: int = Field(8, ge=1, description="calibration windows per step (AutoRound's default 8)")


def autoround_needs(planner, tokens: int, size: int, method: str) -> Needs:
    """Fitted to bench/sim7b.py's 1- and 2-layer zephyr-wide builds (5.61 / 6.32 GB GPTQ, 5.60 / 6.45 GB AWQ,
    bench/README.md section 5) and a 4-layer run: auto-round's imports, the embedding and head in float32,
    the block being tuned in float32 3.5 times over (weights, tuned copy, gradients, workspace), every
    calibration token's input to it and its unquantized output (bfloat16), and per decoder layer what stays
    in memory once its block is done. That last term is why AutoRound does not fit a 24 GB machine at 7B:
    streamed from the checkpoint (GPTQ), each finished block is still held, about 1.6x its bfloat16 weights;
    loaded whole (AWQ, see `_streamed`), 2x. Both grow with depth; gptqmodel's solvers do not. On a GPU the
    blocks and activations go to the device and the rest stays in host memory (not measured here)."""
    c = planner.config
    host = IMPORTS + 2 * 4 * c["vocab_size"] * c["hidden_size"]
    held = int((1.6 if STREAMED[method] else 2.0) * c["num_hidden_layers"] * planner.layer_bytes(2))
    tuning = int(3.5 * planner.layer_bytes(4)) + 2 * 2 * tokens * c["hidden_size"]
    if planner.gpu:
        return Needs(ram=host + held, vram=tuning, disk_out=size)
    return Needs(ram=host + held + tuning, disk_out=size)


def autoround_description(options: AutoRoundSpec) -> str:
    """The card's words for how the file was tuned."""
    return f"AutoRound ({options.iters} tuning steps per block, {options.batch_size} windows each), no act order"


class _BlockLosses(logging.Handler):
    """AutoRound logs each block's output loss before tuning and at its best step; kept for report.json as
    gptqmodel's per-module loss log is (`module_losses`)."""

    LINE = re.compile(r"loss iter 0: ([0-9.e+-]+) -> iter (\d+): ([0-9.e+-]+)")

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = self.LINE.search(record.getMessage())
        if found:
            start, step, best = found.groups()
            self.rows.append(
                {"block": len(self.rows), "loss_start": float(start), "best_step": int(step), "loss": float(best)}
            )


@contextlib.contextmanager
def _streamed(on: bool) -> Iterator[None]:
    """AutoRound's disk streaming (`AR_DISK_STREAM_MODEL`): blocks read from the checkpoint as they are tuned
    instead of the whole model loaded first, the same bytes out (measured on the tiny model). auto-round 0.16.1's
    AutoAWQ export moves the whole model at the end and fails on the streamed one ("Cannot copy out of meta
    tensor"), so AWQ loads the model whole (plan counts it)."""
    before = os.environ.get(STREAM_ENV)
    os.environ[STREAM_ENV] = "1" if on else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(STREAM_ENV, None)
        else:
            os.environ[STREAM_ENV] = before


def run_autoround(
    base_path: Path,
    options: AutoRoundSpec,
    bits: int,
    group_size: int,
    sym: bool,
    method: Method,
    input_ids: np.ndarray,
    out: Path,
) -> EngineResult:
    """Tune `base_path` on the calibration windows and write `method`'s layout (AutoGPTQ's or AutoAWQ's) into `out`,
    with the base's tokenizer files and float16 tensors like gptqmodel's."""
    import torch
    from auto_round import AutoRound
    from auto_round.utils.device import CpuInfo
    from transformers import AutoTokenizer

    device = compute_device()
    base_path, out = Path(base_path).resolve(), Path(out).resolve()  # AutoRound runs in its own folder
    workdir = out / ".engine"
    workdir.mkdir(parents=True)
    samples, seq_len = input_ids.shape
    log.info(
        "auto-round: %d-bit g%d %s, %d iters x %d windows per block, %d x %d tokens, on %s",
        bits,
        group_size,
        method,
        options.iters,
        min(options.batch_size, samples),
        samples,
        seq_len,
        device,
    )
    losses = _BlockLosses()
    logging.getLogger(ENGINE_LOGGER).addHandler(losses)
    try:
        stream = STREAMED[method]
        if stream and device == "cpu" and not CpuInfo().bf16:
            # Without AVX512-BF16 AutoRound tunes in float32 (its `amp` off) but loads streamed blocks in the
            # checkpoint's bfloat16, and the first block fails ("expected m1 and m2 to have the same dtype");
            # loaded whole, the model is cast to float32 first. Memory then is the whole model in float32.
            log.warning("auto-round: this CPU has no bfloat16 support; tuning in float32, the model loaded whole")
            stream = False
        with contextlib.chdir(workdir), _streamed(stream):
            rounder = AutoRound(
                str(base_path),
                AutoTokenizer.from_pretrained(base_path),
                bits=bits,
                group_size=group_size,
                sym=sym,
                iters=options.iters,
                batch_size=min(options.batch_size, samples),
                nsamples=samples,
                seqlen=seq_len,
                dataset=[torch.from_numpy(row).unsqueeze(0) for row in input_ids],
                device_map=device,
                enable_torch_compile=False,
            )
            try:
                rounder.quantize_and_save(str(workdir / "export"), format=f"auto_{method}")
            except (ValueError, RuntimeError) as err:
                raise EngineError(f"auto-round failed: {str(err).splitlines()[0]}") from err
        del rounder
        folders = [p.parent for p in (workdir / "export").rglob("config.json")]
        if len(folders) != 1:
            raise EngineError(f"auto-round wrote {len(folders)} model folders, expected one")
        for item in folders[0].iterdir():
            shutil.move(str(item), out / item.name)
    finally:
        logging.getLogger(ENGINE_LOGGER).removeHandler(losses)
        shutil.rmtree(workdir, ignore_errors=True)
    (out / "quantization_config.json").unlink(missing_ok=True)  # AutoRound's copy; the format writes its own
    written = engine_config(out)
    if written.get("quant_method") != method or written.get("bits") != bits or written.get("group_size") != group_size:
        raise EngineError(
            f"auto-round wrote {written.get('quant_method')} {written.get('bits')}-bit g{written.get('group_size')}, "
            f"expected {method} {bits}-bit g{group_size}"
        )
    finish_folder(base_path, out)
    return EngineResult(device=device, dtype="float16", module_losses=losses.rows)
