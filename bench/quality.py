"""Issue #8.4: quality per bit of every built variant (bits per weight against ppl delta and KLD).

Why: a publisher picks variants by what they cost in size and lose in quality. The
toolkit's `report` command collects every checked variant (ppl and KLD on the held-out
set, the same token ids for every format) into comparison.json and a size-against-KLD
plot; this runs it on a build folder (default: sharing.py's matrix run), adds the
relative ppl change and the size-quality Pareto front, names the format with the lowest
KLD in each size class, and copies the plot to bench/results/quality.png.

    .venv/bin/python bench/quality.py [--out DIR] [--config FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from common import CONFIG, RESULTS, WORK, bench_env, log, markdown, quantize_cli, run, table, write_result


def nominal_bits(variant: str) -> int | None:
    """The bit width a variant is sold as (gptq-4bit-*, gguf-q4_k_m, gguf-i1-q6_k ...), its size class.

    Measured bpw mixes in what every format keeps at higher precision (SmolLM2's tied
    49152 x 576 embedding is a fifth of its weights: fp16 in GPTQ, Q6_K/Q8_0 in GGUF), so
    classes go by the quantized layers' width, and bpw is shown beside.
    """
    found = re.search(r"(\d+)bit", variant) or re.search(r"q(\d)_", variant)
    return int(found.group(1)) if found else None


def pareto(rows: list[dict]) -> set[str]:
    """Variants no other variant beats on both size (bpw) and KLD."""
    front = set()
    for r in rows:
        if not any(
            o is not r
            and o["bpw"] <= r["bpw"]
            and o["kld"] <= r["kld"]
            and (o["bpw"], o["kld"]) != (r["bpw"], r["kld"])
            for o in rows
        ):
            front.add(r["variant"])
    return front


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=WORK / "sharing" / "matrix-out", help="build output root (default: %(default)s)"
    )
    parser.add_argument("--config", type=Path, default=CONFIG)
    args = parser.parse_args()
    log(f"python -m quantize report --config {args.config} --out {args.out}")
    _, text = run(quantize_cli("report", "--config", str(args.config), "--out", str(args.out)), bench_env())
    comparison = json.loads((args.out / "comparison.json").read_text())
    base = comparison["base"]
    rows = [dict(r) for r in comparison["variants"] if r["kld"] is not None]
    if not rows:
        raise SystemExit(f"{args.out}: no checked variants; build them with checks first")
    for r in rows:
        r["delta_pct"] = 100 * r["delta"] / base["ppl"]
    front = pareto(rows)
    for r in rows:
        r["pareto"] = "yes" if r["variant"] in front else ""
    rows.sort(key=lambda r: r["bpw"])
    winners = []
    for bits in sorted({nominal_bits(r["variant"]) for r in rows} - {None}):
        members = [r for r in rows if nominal_bits(r["variant"]) == bits]
        best = min(members, key=lambda r: r["kld"])
        smallest = min(members, key=lambda r: r["bpw"])
        winners.append(
            {
                "class": f"{bits}-bit",
                "best": best["variant"],
                "format": best["format"],
                "bpw": best["bpw"],
                "kld": best["kld"],
                "smallest": f"{smallest['variant']} ({smallest['bpw']:.2f})",
                "candidates": ", ".join(f"{m['variant']} ({m['kld']:.4f})" for m in members),
            }
        )
    cols = [
        ("format", "FORMAT", ""),
        ("variant", "VARIANT", ""),
        ("bpw", "BPW", ".2f"),
        ("ppl", "PPL", ".3f"),
        ("delta", "PPL DELTA", "+.3f"),
        ("delta_pct", "DELTA %", "+.1f"),
        ("kld", "KLD", ".4f"),
        ("top1", "TOP-1", ".3f"),
        ("pareto", "PARETO", ""),
    ]
    print(f"base: ppl {base['ppl']:.3f}, 16 bpw, {base['size_gb']:.3f} GB")
    print(table(rows, cols))
    wcols = [
        ("class", "CLASS", ""),
        ("best", "LOWEST KLD", ""),
        ("format", "FORMAT", ""),
        ("bpw", "BPW", ".2f"),
        ("kld", "KLD", ".4f"),
        ("smallest", "SMALLEST (BPW)", ""),
        ("candidates", "ALL (KLD)", ""),
    ]
    print()
    print(table(winners, wcols))
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.out / "comparison.png", RESULTS / "quality.png")
    log(f"plot copied to {RESULTS / 'quality.png'}")
    write_result(
        "quality",
        {
            "out": str(args.out),
            "base": base,
            "rows": rows,
            "winners": winners,
            "markdown": markdown(rows, cols),
            "winners_markdown": markdown(winners, wcols),
        },
    )


if __name__ == "__main__":
    main()
