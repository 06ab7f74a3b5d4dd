"""The MLX card's sections: the branches with their parameters and figures, and mlx-lm's commands."""

from __future__ import annotations

from collections.abc import Callable

from ..clients import Support, table_rows
from ..sections import QUALITY_HEAD, CardInputs, base_quality, branch_cell, gb, quality, table
from .spec import MLXSpec


def provided(c: CardInputs, clients: Callable[[MLXSpec], list[str]]) -> str:
    head = ["Branch", "Bits", "GS", "Mode", "Size", "BPW", "Loads in", *QUALITY_HEAD, "Desc"]
    figures = base_quality(c)
    base = None if figures is None else ["unquantized", "16", "-", "-", "-", "16", "-", *figures, "-"]
    rows = []
    for r in sorted(c.rows, key=lambda r: (not r.variant.default, r.report.bits_per_weight)):
        spec = r.variant.spec
        mixed = spec.module_bits()
        bits = f"{mixed[0]}/{mixed[1]}" if mixed else str(spec.bits)
        desc = (
            f"mixed: {mixed[1]}-bit v_proj/down_proj in some layers and lm_head, {mixed[0]}-bit elsewhere"
            if mixed
            else f"{spec.bits}-bit {spec.mode}"
        )
        rows.append(
            [
                branch_cell(c, r.variant),
                bits,
                str(spec.group_size),
                spec.mode,
                gb(r.size),
                f"{r.report.bits_per_weight:.2f}",
                ", ".join(clients(spec)),
                *quality(r),
                desc,
            ]
        )
    intro = (
        "Each branch holds one set of parameters; `main` holds the default. Made by mlx-lm's converter "
        "(round to nearest, per group of GS weights: affine keeps a scale and a bias per group, mxfp4/nvfp4/"
        "mxfp8 an 8-bit shared scale). PPL and KLD are measured against the unquantized model on held-out text, "
        "computed by mlx-lm in float32 on the same token ids as the other formats of this model (lower is "
        "better). BPW counts every byte of the weight files, embeddings included."
    )
    return f"## Provided files, and MLX parameters\n\n{intro}\n\n{table(head, base, rows)}"


def usage(c: CardInputs, support: list[Support]) -> str:
    repo = c.repo
    example = next((r.variant.branch for r in c.rows if not r.variant.default), c.rows[0].variant.branch)
    local = f"{repo.split('/')[-1]}-{example}"
    return "\n".join(
        [
            "## How to run it",
            "",
            "On Apple silicon `pip install mlx-lm`; on Linux (CPU) `pip install 'mlx[cpu]' mlx-lm`. "
            "The default branch (`main`):",
            "",
            "```shell",
            f'mlx_lm.generate --model {repo} --prompt "Tell me about AI"',
            "```",
            "",
            "Another branch, downloaded as above:",
            "",
            "```shell",
            f'mlx_lm.generate --model ./{local} --prompt "Tell me about AI"',
            "```",
            "",
            "From Python:",
            "",
            "```python",
            "from mlx_lm import generate, load",
            "",
            f"model, tokenizer = load({repo!r}, revision={example!r})",
            "messages = [{'role': 'user', 'content': 'Tell me about AI'}]",
            "prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)",
            "print(generate(model, tokenizer, prompt=prompt, max_tokens=256))",
            "```",
            "",
            "## Compatibility",
            "",
            table(
                ["Client", "Loads", "Checked with", "Note"],
                None,
                table_rows(support),
            ),
        ]
    )
