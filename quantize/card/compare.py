"""`report`: every built variant side by side, as text, Markdown, JSON and a size-vs-KLD plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import formats, tables
from ..config import Project
from ..outputs import built_report, model_bytes
from ..paths import write_json

COLUMNS = (
    "format",
    "variant",
    "size_gb",
    "bpw",
    "ppl",
    "delta",
    "kld",
    "top1",
    "chat_kld",
    "smoke",
    "memory_gb",
    "gate",
)


@dataclass
class Table:
    rows: list[dict]
    base: dict | None  # the unquantized model: size and ppl, for the plot and the table's first line

    def _cells(self, row: dict) -> list[str]:
        def f(value, fmt):
            return "-" if value is None else format(value, fmt)

        return [
            row["format"],
            row["variant"],
            f(row["size_gb"], ".3f"),
            f(row["bpw"], ".2f"),
            f(row["ppl"], ".3f"),
            f(row["delta"], "+.3f"),
            f(row["kld"], ".4f"),
            "-" if row["top1"] is None else f"{100 * row['top1']:.1f}%",
            f(row["chat_kld"], ".4f"),
            row["smoke"] or "-",
            f(row["memory_gb"], ".2f"),
            row["gate"],
        ]

    def _all(self) -> list[list[str]]:
        header = [
            "FORMAT",
            "VARIANT",
            "SIZE GB",
            "BPW",
            "PPL",
            "DELTA",
            "KLD",
            "TOP-1",
            "CHAT KLD",
            "SMOKE",
            "MEM GB",
            "GATE",
        ]
        lines = [header]
        if self.base:
            lines.append(self._cells(self.base))
        return lines + [self._cells(r) for r in self.rows]

    def text(self) -> str:
        return tables.aligned(self._all())

    def markdown(self) -> str:
        head, *rows = self._all()
        return tables.markdown(head, rows)


def collect(project: Project, out_root: Path) -> Table:
    rows, base = [], None
    for variant in project.variants:
        report = built_report(out_root, variant)
        if report is None:
            continue
        c = report.checks
        memory = None
        if c is not None:
            peak = c.memory.peak_cuda_bytes if c.memory.peak_cuda_bytes is not None else c.memory.peak_rss_bytes
            memory = None if peak is None else peak / 1e9
            if base is None:
                base_bytes = report.bits_per_weight and model_bytes(report.files) * 16 / report.bits_per_weight
                base = {
                    "format": "base",
                    "variant": "unquantized (16-bit)",
                    "size_gb": base_bytes / 1e9,
                    "bpw": 16.0,
                    "ppl": c.base_ppl,
                    "delta": 0.0,
                    "kld": 0.0,
                    "top1": 1.0,
                    "chat_kld": 0.0 if c.chat else None,
                    "smoke": f"{c.smoke.base_passed}/{c.smoke.prompts}" if c.smoke else None,
                    "memory_gb": None,
                    "gate": "-",
                }
        rows.append(
            {
                "format": variant.format,
                "variant": variant.name,
                "size_gb": model_bytes(report.files) / 1e9,
                "bpw": report.bits_per_weight,
                "ppl": c and c.ppl,
                "delta": c and c.ppl_delta,
                "kld": c and c.mean_kld,
                "top1": c and c.top1_agreement,
                "chat_kld": c.chat.mean_kld if c and c.chat else None,
                "smoke": f"{c.smoke.passed}/{c.smoke.prompts}" if c and c.smoke else None,
                "memory_gb": memory,
                "gate": {"passed": "pass", "failed": "FAIL", "built": "unchecked"}[report.status],
            }
        )
    return Table(rows, base)


def plot(table: Table, path: Path) -> Path:
    """Size against mean KLD (log scale), one marker style per format, the base model marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    checked = [r for r in table.rows if r["kld"] is not None]
    for fmt in formats.FORMATS.values():
        points = [r for r in checked if r["format"] == fmt.name]
        if points:
            ax.scatter(
                [r["size_gb"] for r in points],
                [max(r["kld"], 1e-6) for r in points],
                marker=fmt.plot_marker,
                label=fmt.title,
                s=36,
            )
            for r in points:
                ax.annotate(
                    r["variant"],
                    (r["size_gb"], max(r["kld"], 1e-6)),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    if table.base:
        ax.axvline(table.base["size_gb"], color="grey", linestyle="--", linewidth=1)
        ax.annotate(
            "base (16-bit)",
            (table.base["size_gb"], ax.get_ylim()[1] if checked else 1),
            fontsize=8,
            rotation=90,
            va="top",
            ha="right",
            color="grey",
        )
    ax.set_yscale("log")
    ax.set_xlabel("file size (GB)")
    ax.set_ylabel("mean KL divergence vs base (log)")
    ax.set_title("Size against quality of every variant")
    ax.grid(True, which="both", alpha=0.3)
    if checked:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(table: Table, out_root: Path) -> list[Path]:
    out_root.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = out_root / "comparison.json", out_root / "comparison.md", out_root / "comparison.png"
    write_json(json_path, {"base": table.base, "variants": table.rows, "columns": list(COLUMNS)})
    md_path.write_text(table.markdown() + "\n")
    return [json_path, md_path, plot(table, png_path)]
