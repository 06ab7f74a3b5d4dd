"""The pieces every card section is written with: the inputs, numbers and tables as cards show them.

Kept apart from `render` (which asks the format registry for its sections) so that format
modules can write their sections with the same cells without importing the renderer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import tables
from ..config import Project, Variant
from ..manifest import Manifest
from ..outputs import model_bytes
from ..records import CheckReport, Report
from ..weblinks import Links


@dataclass(frozen=True)
class Row:
    """One published variant, as the card shows it."""

    variant: Variant
    report: Report
    manifest: Manifest  # what the branch's quantize.json says: the card's quality figures come from it

    @property
    def size(self) -> int:
        return model_bytes(self.report.files)


@dataclass
class CardInputs:
    project: Project
    repo: str
    format: str
    rows: list[Row]
    model_type: str | None
    base_card: str | None
    family: dict[str, str] = field(default_factory=dict)  # format -> repo, every repo of this project
    has_plot: bool = False
    links: Links = field(default_factory=Links.endpoint)  # the hub the card is written for (`card --endpoint/--git`)


def gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def vram(r: Row) -> str:
    m = r.report.checks.memory if r.report.checks else None
    if m and m.peak_cuda_bytes:
        return gb(m.peak_cuda_bytes)
    if m and m.predicted_run_bytes:
        return f"~{gb(m.predicted_run_bytes)}"
    return "-"


# The checks' figures every files table shows: plain-text ppl and KLD, KLD on assistant turns of chats in the
# template, and smoke replies without a problem against the unquantized model's count on the same prompts.
QUALITY_HEAD = ["PPL", "Δ PPL", "KLD", "Chat KLD", "Smoke"]


def quality(r: Row) -> list[str]:
    """From the manifest published beside the files, so what the card says is what `verify --check` compares."""
    ch = r.manifest.figures
    sm = ch.smoke
    return [
        num(ch.ppl, ".3f"),
        num(ch.ppl - ch.base_ppl, "+.3f"),
        num(ch.mean_kld, ".4f"),
        num(ch.chat.mean_kld if ch.chat else None, ".4f"),
        f"{sm.passed}/{sm.prompts} (base {sm.base_passed})" if sm else "-",
    ]


def first_checks(c: CardInputs) -> CheckReport | None:
    """The first checked row's checks: what every row shares (the eval set, the base's figures, the suites)."""
    return next((r.report.checks for r in c.rows if r.report.checks), None)


def base_quality(c: CardInputs) -> list[str] | None:
    """The unquantized model's cells under QUALITY_HEAD: its ppl and its own smoke count (from a manifest)."""
    if not c.rows:
        return None
    checks = c.rows[0].manifest.figures
    sm = checks.smoke
    return [f"{checks.base_ppl:.3f}", "-", "-", "-", f"{sm.base_passed}/{sm.prompts}" if sm else "-"]


def branch_cell(c: CardInputs, v: Variant) -> str:
    # f-strings only: the repo is the user's text, and str.format would read braces in it.
    if v.default:
        return f"[main]({c.links.tree(c.repo, 'main')}) (= {v.branch})"
    return f"[{v.branch}]({c.links.tree(c.repo, v.branch)})"


def fetch_lines(c: CardInputs, branch: str, hf_args: str) -> list[str]:
    """The shell line(s) that fetch `branch` from where the card is published.

    A hub gets huggingface_hub's CLI (`hf download REPO ...`, with HF_ENDPOINT when it is not
    huggingface.co); a git destination has no hub API, so it gets the clone the publisher pushed to.
    """
    if c.links.web:
        return [f"{c.links.download_env}hf download {c.repo} {hf_args}"]
    return [f"git clone --branch {branch} {c.links.repo(c.repo)}"]


def on_hub(c: CardInputs, *lines: str) -> list[str]:
    """`lines` where the card is published to a hub, none for a git destination (whose readers have no hub
    client to point at it: text-generation-webui's box, huggingface-cli, snapshot_download)."""
    return list(lines) if c.links.web else []


def calibration_cells(r: Report) -> tuple[str, str]:
    cal = r.inputs.calibration
    if cal is None:
        return "-", "-"
    chat = f" ({cal.chat_samples} of {cal.samples} samples as chats)" if cal.chat_samples else ""
    return f"{cal.recipe}{chat}", str(cal.seq_len)


def table(head: list[str], base: list[str] | None, rows: list[list[str]]) -> str:
    """A Markdown table; `base` (the unquantized model's row) goes first when there is one."""
    return tables.markdown(head, ([base] if base else []) + rows)


def chat_prompt(c: CardInputs) -> str:
    """The prompt template filled with the usage examples' message."""
    cfg = c.project.config
    return cfg.prompt_template.replace("{system}", cfg.system_prompt or "").replace("{prompt}", "Tell me about AI")
