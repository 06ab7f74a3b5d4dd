"""Every on-disk record: report.json and what it holds (stage measures, files, calibration and eval
stats, check results, verdicts, smoke replies).

The bottom of the import graph (it imports only the atomic writer): the config schema, cards
and publishing read records without importing the check stack or torch. Later stages read only
report.json, so it carries every input hash, the versions that produced the files, and
each file's size and sha256.
"""

from __future__ import annotations

import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from .paths import write_json

REPORT_NAME = "report.json"
SCHEMA_VERSION = 1
# Recorded in every report besides the format's own engines (`Format.engine_packages`): what every build runs on.
CORE_PACKAGES = ("quantize", "torch", "transformers", "tokenizers", "safetensors", "numpy")


class StageMeasure(BaseModel):
    seconds: float
    peak_rss_bytes: int | None
    peak_cuda_bytes: int | None = None


class OutputFile(BaseModel):
    path: str
    size: int
    sha256: str


class Machine(BaseModel):
    """Where the files were computed. The same inputs give the same bytes on the same CPU at the same thread
    count (tests/test_reproducible.py); gptqmodel's GPTQ solution changes with torch's thread count (its
    float32 sums run in another order), so a rebuild that must match byte for byte needs these too."""

    cpu: str  # the model name the kernel reports, or the platform's machine name
    isa: list[str]  # the vector extensions torch and llama.cpp choose kernels by (avx2, avx512f, amx_tile, ...)
    cores: int  # CPUs this process may run on
    threads: int  # torch's intra-op threads during the build


class CalibrationStats(BaseModel):
    """What went into the token tensor; recorded in every report.json."""

    recipe: str
    source: str
    hash: str
    documents: int
    characters: int
    tokens: int
    samples: int
    seq_len: int
    seed: int
    chat_samples: int = Field(0, description="of the samples, how many are conversations in the prompt template")


class EvalStats(BaseModel):
    eval: str
    source: str
    hash: str
    windows: int
    n_ctx: int
    scored_tokens: int


class Reply(BaseModel):
    """One smoke prompt's greedy reply; beside the base model's own once judged against it."""

    prompt: str
    reply: str
    problems: list[str]  # this reply's, judged alone
    kind: str = ""
    ids: list[int] = []  # the reply's token ids (agreement with the base is counted on ids, not text)
    skipped: str | None = None  # why the prompt was not asked (a multi-turn prompt and no chat template)
    base_reply: str | None = None
    base_problems: list[str] = []
    new_problems: list[str] = []  # problems the base's reply does not have: what the gate counts
    agree_tokens: int | None = None  # tokens identical to the base's greedy reply before the first divergence
    same_share: float | None = None  # share of positions holding the base's token, over the longer reply


class SmokeSummary(BaseModel):
    """The smoke suite in counts: how many prompts the variant and the base answer without a problem."""

    suite: str
    prompts: int  # asked (skipped ones left out)
    passed: int  # the variant's replies without any problem
    base_passed: int  # the base model's
    regressions: int  # prompts with a problem the base's reply does not have
    mean_agree_tokens: float
    mean_same_share: float


class ChatStats(BaseModel):
    """What a chat eval scored: the suite's conversations, the base's replies as assistant turns."""

    eval: str
    suite: str
    hash: str
    conversations: int
    n_ctx: int  # the longest conversation (the windows' width)
    scored_tokens: int  # assistant tokens


class Quality(BaseModel):
    """The figures every comparison with the unquantized model yields, on plain text or on chats."""

    base_ppl: float
    ppl: float
    ppl_ratio: float
    mean_kld: float
    p99_kld: float
    top1_agreement: float


class ChatScores(Quality):
    eval: ChatStats


class Verdict(BaseModel):
    gate: str
    limit: float | str
    value: float | str | None
    passed: bool


class Memory(BaseModel):
    peak_rss_bytes: int | None
    peak_cuda_bytes: int | None = None
    load_cuda_bytes: int | None = None
    forward_cuda_bytes: int | None = None  # one batch-1 forward at the variant's sequence length
    predicted_load_bytes: int | None = None
    predicted_run_bytes: int | None = None
    max_ram_required_bytes: int | None = None  # where the format states one (Format.max_ram; GGUF: file + overhead)


class CheckReport(BaseModel):
    eval: EvalStats
    base_ppl: float
    ppl: float
    ppl_delta: float
    ppl_ratio: float
    mean_kld: float
    p99_kld: float
    top1_agreement: float
    memory: Memory
    template_problem: str | None
    replies: list[Reply]
    smoke: SmokeSummary | None = None  # None in reports written before smoke was judged against the base
    chat: ChatScores | None = None  # KLD on assistant turns; None when the project has no chat eval
    verdicts: list[Verdict]
    passed: bool


class VariantInfo(BaseModel):
    name: str
    branch: str
    format: str
    repo: str | None
    default: bool
    params: dict[str, Any]


class BaseModelInfo(BaseModel):
    source: str
    hash: str
    revision: str | None = None


class Inputs(BaseModel):
    base_model: BaseModelInfo
    calibration: CalibrationStats | None
    params: dict[str, Any]
    engine: dict[str, str]


class TensorMix(BaseModel):
    """The per-tensor types a size-budget file holds (GGUF `target_bpw` / `max_size_gb`), and why."""

    budget_bytes: int  # the whole file's budget
    candidates: list[str]  # the types measured for every tensor they fit
    tensor_types: dict[str, str]  # tensor -> type, as written (2-D tensors; norms stay F32)
    type_counts: dict[str, int]
    predicted_kld: float  # the sum over tensors of their measured error, in KLD units (kld_per_error)
    kld_per_error: dict[str, float]  # per tensor class: the probe's KLD over its summed relative error
    measure_seconds: float | None = None  # None when the sensitivities came from the cache


class Report(BaseModel):
    schema_version: int = SCHEMA_VERSION
    status: Literal["built", "passed", "failed"] = "built"  # passed/failed once checked
    variant: VariantInfo
    inputs_hash: str
    inputs: Inputs
    versions: dict[str, str]
    python: str
    device: str
    machine: Machine | None = None  # None in reports written before it was recorded
    dtype: str  # of the saved tensors
    compute_dtype: str | None = None  # what the engine computed in, where it chose (gptqmodel on a CPU)
    created_at: str
    stages: dict[str, StageMeasure]
    files: list[OutputFile]
    total_bytes: int
    bits_per_weight: float
    predicted_bytes: int | None = None  # plan's prediction for the weight file(s), beside the measured size
    module_losses: list[dict[str, Any]] = []
    mix: TensorMix | None = None
    checks: CheckReport | None = None

    def write(self, folder: Path) -> Path:
        path = Path(folder) / REPORT_NAME
        write_json(path, self.model_dump(mode="json"))
        return path


def read_report(folder: Path) -> Report | None:
    """The folder's report, or None when there is none or it is from an incompatible version."""
    path = Path(folder) / REPORT_NAME
    try:
        report = Report.model_validate_json(path.read_text())
    except (OSError, ValidationError):
        return None
    return report if report.schema_version == SCHEMA_VERSION else None


def package_versions(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Installed versions of `names` (the core packages and a format's declared engines); missing ones left out."""
    versions = {}
    for name in dict.fromkeys(names):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def python_version() -> str:
    return f"{platform.python_implementation()} {sys.version.split()[0]}"
