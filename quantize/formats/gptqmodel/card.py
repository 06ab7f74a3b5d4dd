"""The GPTQ/AWQ card's sections: the parameter table TheBloke's cards made familiar, download, usage, clients."""

from __future__ import annotations

from typing import Protocol

from ..clients import Support
from ..sections import (
    QUALITY_HEAD,
    CardInputs,
    Row,
    base_quality,
    branch_cell,
    calibration_cells,
    fetch_lines,
    gb,
    on_hub,
    quality,
    table,
    vram,
)


class WeightFormat(Protocol):
    """What these sections ask of the format that hands itself in (GPTQ or AWQ)."""

    @property
    def title(self) -> str: ...

    @property
    def config_files(self) -> str: ...

    def card_row(self, r: Row) -> tuple[str, str, str]: ...

    def clients(self, spec) -> list[str]: ...

    def support(self, spec) -> list[Support]: ...


def provided(fmt: WeightFormat, c: CardInputs) -> str:
    head = [
        "Branch",
        "Bits",
        "GS",
        "Act Order",
        "Damp %",
        "GPTQ Dataset",
        "Seq Len",
        "Size",
        "Loads in",
        *QUALITY_HEAD,
        "VRAM",
        "Desc",
    ]
    figures = base_quality(c)
    base = (
        None
        if figures is None
        else (["unquantized", "16"] + ["-"] * 7 + figures + ["-", "the original model, for reference"])
    )
    rows = []
    for r in sorted(c.rows, key=lambda r: (not r.variant.default, r.variant.spec.bits, r.variant.spec.group_size)):
        spec, v = r.variant.spec, r.variant
        dataset, seq = calibration_cells(r.report)
        act, damp, desc = fmt.card_row(r)
        rows.append(
            [
                branch_cell(c, v),
                str(spec.bits),
                str(spec.group_size),
                act,
                damp,
                dataset,
                seq,
                gb(r.size),
                ", ".join(fmt.clients(spec)),
                *quality(r),
                vram(r),
                desc,
            ]
        )
    intro = (
        "Each branch holds one set of parameters; `main` holds the default. PPL and KLD are measured against "
        "the unquantized model on held-out text (lower is better); Δ PPL is the increase over it. VRAM is the "
        "peak measured on a GPU for one forward pass at the calibration sequence length, or `~` a prediction "
        "from config.json where no GPU was used. Bits and GS are the quantization bits and group size (-1: "
        "none); Act Order is whether columns were quantized in activation order, and in which layout (static: "
        "groups in file order, `desc_act: false` in the config, run as is by every reader; dynamic: "
        "AutoGPTQ's `desc_act: true`); Damp % is GPTQ's dampening; the dataset and sequence length are those "
        "of the calibration samples, which are not the training data. Loads in: the clients that loaded such "
        "a file in this toolkit's tests (see Compatibility)."
    )
    return f"## Provided files, and {fmt.title} parameters\n\n{intro}\n\n{table(head, base, rows)}"


def download(c: CardInputs) -> str:
    repo = c.repo
    example = next((r.variant.branch for r in c.rows if not r.variant.default), c.rows[0].variant.branch)
    return "\n".join(
        [
            "## How to download from branches",
            "",
            *on_hub(
                c,
                f"- In text-generation-webui, enter `{repo}:{example}` in the download box (`{repo}` alone gets "
                "`main`).",
            ),
            "- From the command line:",
            "",
            "```shell",
            *fetch_lines(c, example, f"--revision {example} --local-dir {repo.split('/')[-1]}"),
            "```",
            *on_hub(
                c,
                "",
                "With huggingface_hub older than 1.0: "
                f"`{c.links.download_env}huggingface-cli download {repo} --revision {example} "
                f"--local-dir {repo.split('/')[-1]}`.",
                "- From Python: `snapshot_download(repo_id, revision=BRANCH)`.",
            ),
        ]
    )


def usage(fmt: WeightFormat, c: CardInputs) -> str:
    repo = c.repo
    default = next((r for r in c.rows if r.variant.default), c.rows[0])
    lines = [
        "## How to run it",
        "",
        "transformers (5.x loads GPTQ and AWQ through gptqmodel: `pip install transformers gptqmodel`):",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"repo, branch = {repo!r}, 'main'",
        "tokenizer = AutoTokenizer.from_pretrained(repo, revision=branch)",
        "model = AutoModelForCausalLM.from_pretrained(repo, revision=branch, device_map='auto')",
        "messages = [{'role': 'user', 'content': 'Tell me about AI'}]",
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt')"
        ".to(model.device)",
        "output = model.generate(inputs, max_new_tokens=256)",
        "print(tokenizer.decode(output[0][inputs.shape[1]:], skip_special_tokens=True))",
        "```",
        "",
    ]
    vllm = [r for r in c.rows if "vLLM" in fmt.clients(r.variant.spec)]
    if vllm:
        branch = "main" if default in vllm else vllm[0].variant.branch
        lines += [
            "vLLM (it reads the quantization from config.json; float16 runs on every platform it supports):",
            "",
            "```shell",
            f"vllm serve {repo} --revision {branch} --dtype float16",
            "```",
            "",
        ]
    return "\n".join(lines + [compatibility(fmt, c)])


def compatibility(fmt: WeightFormat, c: CardInputs) -> str:
    """Per branch, which clients load it, from the tested table (formats/clients.py), and why not."""
    rows = sorted(c.rows, key=lambda r: (not r.variant.default, r.variant.spec.bits, r.variant.spec.group_size))
    support = {r.variant.branch: fmt.support(r.variant.spec) for r in rows}
    clients = list(dict.fromkeys(s.client for entries in support.values() for s in entries))
    cells = [
        [r.variant.branch]
        + [next((s.mark for s in support[r.variant.branch] if s.client == name), "-") for name in clients]
        for r in rows
    ]
    notes = dict.fromkeys(
        f"{s.client} ({s.checked}): {s.note}" for entries in support.values() for s in entries if s.note
    )
    return "\n".join(
        [
            "## Compatibility",
            "",
            "The files follow the layout AutoGPTQ/AutoAWQ wrote, which transformers and vLLM read: "
            f"{fmt.config_files} `yes` means a test of this toolkit loaded such a file in that client and matched "
            "the transformers perplexity; `no` that the client refused it; `untested` that nothing here ran it.",
            "",
            table(["Branch", *clients], None, cells),
            "",
            *[f"- {note}" for note in notes],
        ]
    )
