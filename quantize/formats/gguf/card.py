"""The GGUF card's sections: every file with its type, size, max RAM and figures, and llama.cpp's commands."""

from __future__ import annotations

from ...outputs import IMATRIX_SUFFIX, TENSOR_TYPES_SUFFIX, is_model_file
from ..sections import QUALITY_HEAD, CardInputs, Row, base_quality, chat_prompt, fetch_lines, gb, on_hub, quality, table
from .spec import GGUF_RAM_OVERHEAD, GGUF_USE


def _example(c: CardInputs) -> Row:
    """The row the examples use: Q4_K_M when there is one, as most users want it."""
    return next((r for r in c.rows if r.variant.spec.quant_type == "Q4_K_M"), c.rows[0])


def _file(row: Row) -> str:
    return next(f.path for f in row.report.files if is_model_file(f.path))


def _beside(row: Row, suffix: str) -> str | None:
    """The file published beside the row's GGUF that ends in `suffix` (its importance matrix, its layout)."""
    return next((f.path for f in row.report.files if f.path.endswith(suffix)), None)


def provided(c: CardInputs) -> str:
    head = ["Name", "Quant method", "Bits", "Size", "Max RAM required", *QUALITY_HEAD, "Use case"]
    figures = base_quality(c)
    base = (
        None if figures is None else ["unquantized", "-", "16", "-", "-", *figures, "the original model, for reference"]
    )
    rows = []
    for r in sorted(c.rows, key=lambda r: (r.report.bits_per_weight, r.variant.name)):
        spec = r.variant.spec
        nominal, use = GGUF_USE.get(spec.label, (None, ""))
        name = _file(r)
        method = spec.label + (" + imatrix" if spec.imatrix else "")
        if r.report.mix is not None:
            mix = r.report.mix
            method = f"per-tensor mix to {gb(mix.budget_bytes)}" + (" + imatrix" if spec.imatrix else "")
            counts = ", ".join(f"{n} {t}" for t, n in sorted(mix.type_counts.items(), key=lambda kv: -kv[1]))
            use = f"types chosen per tensor by measured sensitivity to fit the budget: {counts}"
        if layout := _beside(r, TENSOR_TYPES_SUFFIX):
            use += (
                f" (layout: [{layout}]({c.links.blob(c.repo, 'main', layout)}), for llama-quantize --tensor-type-file)"
            )
        if spec.imatrix:
            matrix = _beside(r, IMATRIX_SUFFIX)
            named = f"[{matrix}]({c.links.blob(c.repo, 'main', matrix)})" if matrix else "not published"
            use += f"; importance matrix from {spec.imatrix} ({named})"
        m = r.report.checks.memory if r.report.checks else None
        ram = gb(m.max_ram_required_bytes) if m and m.max_ram_required_bytes else "-"
        bits = f"{nominal if nominal is not None else '-'} ({r.report.bits_per_weight:.2f} bpw)"
        rows.append(
            [
                f"[{name}]({c.links.blob(c.repo, 'main', name)}) (branch `{r.variant.branch}`)",
                method,
                bits,
                gb(r.size),
                ram,
                *quality(r),
                use,
            ]
        )
    return (
        "## Provided files\n\n"
        + table(head, base, rows)
        + f"\n\nMax RAM required assumes no GPU offloading: the file size plus {GGUF_RAM_OVERHEAD / 1e9:g} GB. "
        "Offloading layers to a GPU moves that memory to VRAM."
    )


def download(c: CardInputs) -> str:
    row = _example(c)
    return "\n".join(
        [
            "## How to download",
            "",
            "Every file is on `main` and on its own branch. Fetch just the one you need:",
            "",
            "```shell",
            *on_hub(c, *fetch_lines(c, "main", f"{_file(row)} --local-dir .")),
            *fetch_lines(c, row.variant.branch, f"--revision {row.variant.branch} --local-dir {row.variant.branch}"),
            "```",
            "",
            *on_hub(
                c,
                "With huggingface_hub older than 1.0 the command is `huggingface-cli download` with the same "
                "arguments.",
            ),
        ]
    )


def usage(c: CardInputs) -> str:
    first, prompt = _file(_example(c)), chat_prompt(c)
    return "\n".join(
        [
            "## How to run it",
            "",
            "llama.cpp, as a chat (the prompt template is in the file):",
            "",
            "```shell",
            f"llama-cli -m {first} -c 2048 -cnv",
            "```",
            "",
            "or with a raw prompt:",
            "",
            "```shell",
            f"llama-cli -m {first} -c 2048 --temp 0.7 -e -p {prompt!r}",
            "```",
            "",
            "llama-cpp-python:",
            "",
            "```python",
            "from llama_cpp import Llama",
            "",
            f"llm = Llama(model_path={first!r}, n_ctx=2048)",
            f"print(llm({prompt!r}, max_tokens=256)['choices'][0]['text'])",
            "```",
        ]
    )
