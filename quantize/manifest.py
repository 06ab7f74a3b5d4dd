"""quantize.json: the machine-readable provenance every published branch carries.

report.json stays in OUT: it holds stage timings, per-module losses and every smoke reply,
and it is the record later stages of *this* machine read. What a downloader needs is
smaller and must hold nothing local: which toolkit and engines made the files, from which
base model (id, revision, content hash), calibration recipe and eval set (with their hashes),
with which parameters; every file's size and sha256; and the figures the checks measured,
with the noise a re-run of those checks on another machine may show. `publish` sends it
and verifies the remote against it, the card takes its figures from it, and `verify`
checks a downloaded branch against it.

A variant's own branch (and `main`, where the variant is the format's default) holds it as
`quantize.json`. The `main` of a GGUF repo holds every GGUF variant's files side by side,
written by independent publishes, so each variant's manifest there is
`quantize/BRANCH.json`: no two writers ever write the same path, and together they name
every file on that branch.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ValidationError

from . import __version__
from .outputs import CARD_FILES, HUB_FILES, model_bytes
from .paths import write_json
from .records import (
    CalibrationStats,
    ChatScores,
    EvalStats,
    Machine,
    OutputFile,
    Quality,
    Report,
    SmokeSummary,
    TensorMix,
    VariantInfo,
    Verdict,
)

MANIFEST_NAME = "quantize.json"
SHARED_DIR = "quantize"  # on a branch several variants share: quantize/BRANCH.json
MANIFEST_VERSION = 1
# Files on a branch that no manifest names: the repo's card and plot, and what the hub itself adds.
UNLISTED = (*CARD_FILES, *HUB_FILES)


class Tolerance(BaseModel):
    """How far `verify --check` may land from `figures` when it re-runs the checks on the downloaded files.

    The files are the same bytes; what moves is the arithmetic: another CPU's kernels, thread count and
    summation order. On one CPU, 1 and 2 threads gave bit-identical figures (`bench/recheck_noise.py`), so
    this is a margin for other CPUs, not a measured noise. Relative for perplexity and mean KLD, absolute for
    top-1 agreement (a share)."""

    ppl_rel: float = 0.005
    mean_kld_rel: float = 0.02
    top1_abs: float = 0.005


class Figures(Quality):
    """What the checks measured against the unquantized model, as the card shows it."""

    eval: EvalStats
    chat: ChatScores | None
    smoke: SmokeSummary | None
    verdicts: list[Verdict]
    peak_rss_bytes: int | None
    model_bytes: int
    total_bytes: int
    bits_per_weight: float


class BaseModelRef(BaseModel):
    """The unquantized model: its hub id where the config names one, the commit it was resolved to, and the
    hash of what was read (for a local folder or a PyPI GGUF, the hash is the only stable name)."""

    id: str | None
    revision: str | None
    source: str  # hub:ID, local:NAME or pypi:PACKAGE==VERSION: never a path
    hash: str


class Manifest(BaseModel):
    manifest_version: int = MANIFEST_VERSION
    quantize: str  # the toolkit version that built and checked the files
    variant: VariantInfo
    base_model: BaseModelRef
    calibration: CalibrationStats | None  # recipe, source and hash; None for data-free variants
    inputs_hash: str  # what build's cache is keyed on: the same inputs give the same hash
    engines: dict[str, str]  # every package version the build recorded
    python: str
    device: str
    machine: Machine | None = None  # CPU, its kernel flags, cores and threads: what a byte-for-byte rebuild matches
    dtype: str
    compute_dtype: str | None
    built_at: str
    files: list[OutputFile]  # every file of the variant, sorted by path; the card and plot are not among them
    mix: TensorMix | None = None  # a size-budget GGUF: the chosen type of every tensor
    figures: Figures
    tolerance: Tolerance = Tolerance()


class Remeasured(BaseModel):
    """`verify --check`: one figure as published and as measured again, and whether they agree within tolerance."""

    figure: str
    published: float
    measured: float
    allowed: float  # the largest difference the manifest's tolerance allows for this figure
    within: bool


class Recheck(BaseModel):
    variant: str
    figures: list[Remeasured]


def manifest_path(branch: str, exclusive: bool) -> str:
    """The manifest's path for a publish target: its own name on an exclusive branch, one per variant on a
    shared one (`branch` is the variant's own branch name)."""
    return MANIFEST_NAME if exclusive else f"{SHARED_DIR}/{branch}.json"


def from_report(report: Report, base_id: str | None) -> Manifest:
    """The manifest of a checked variant; refuses a report without checks (nothing to publish)."""
    checks = report.checks
    if checks is None:
        raise ValueError(f"{report.variant.name}: not checked, no figures for a manifest")
    figures = Figures(
        **{name: getattr(checks, name) for name in Quality.model_fields},
        eval=checks.eval,
        chat=checks.chat,
        smoke=checks.smoke,
        verdicts=checks.verdicts,
        peak_rss_bytes=checks.memory.peak_rss_bytes,
        model_bytes=model_bytes(report.files),
        total_bytes=report.total_bytes,
        bits_per_weight=report.bits_per_weight,
    )
    base = report.inputs.base_model
    return Manifest(
        quantize=report.versions.get("quantize", __version__),
        variant=report.variant,
        base_model=BaseModelRef(id=base_id, revision=base.revision, source=base.source, hash=base.hash),
        calibration=report.inputs.calibration,
        inputs_hash=report.inputs_hash,
        engines=dict(sorted(report.versions.items())),
        python=report.python,
        device=report.device,
        machine=report.machine,
        dtype=report.dtype,
        compute_dtype=report.compute_dtype,
        built_at=report.created_at,
        files=sorted(report.files, key=lambda f: f.path),
        mix=report.mix,
        figures=figures,
    )


def write(folder: Path, manifest: Manifest) -> Path:
    """OUT/BRANCH/quantize.json: the bytes `publish` sends (the same report always gives the same bytes)."""
    path = Path(folder) / MANIFEST_NAME
    write_json(path, manifest.model_dump(mode="json"))
    return path


def parse(data: bytes) -> Manifest | None:
    """A manifest read back from a branch, or None when the bytes are not one this version reads."""
    try:
        return Manifest.model_validate_json(data)
    except ValidationError:
        return None
