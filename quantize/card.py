"""`card`: one README.md per output repo, written from the variants' reports.

A card people trust says what each file is, how it was made and how much it lost, in
numbers measured on the published bytes. Everything here comes from report.json files
and the config; `render` is a pure function of `CardInputs`, so the layout is held by
golden-file tests.
"""

from __future__ import annotations

import logging
import re
import shutil

import yaml
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import ModelCardData

from . import __version__
from .config import Project, Variant
from .outputs import model_bytes
from .paths import write_atomic
from .report import Report, read_report

log = logging.getLogger(__name__)

HUB = "https://huggingface.co"
FORMAT_TITLES = {"gptq": "GPTQ", "awq": "AWQ", "gguf": "GGUF"}
PLOT_NAME = "comparison.png"

# What each llama.cpp type is for, in one line; nominal bits as people quote them.
GGUF_USE = {
    "Q2_K": (2, "smallest; large quality loss, for when nothing else fits"),
    "Q3_K_S": (3, "very small; high quality loss"),
    "Q3_K_M": (3, "very small; high quality loss"),
    "Q3_K_L": (3, "small; substantial quality loss"),
    "Q4_0": (4, "legacy 4-bit; prefer Q4_K_M"),
    "Q4_1": (4, "legacy 4-bit; prefer Q4_K_M"),
    "Q4_K_S": (4, "small; a little more loss than Q4_K_M"),
    "Q4_K_M": (4, "medium; balanced quality, the usual choice"),
    "Q5_0": (5, "legacy 5-bit; prefer Q5_K_M"),
    "Q5_1": (5, "legacy 5-bit; prefer Q5_K_M"),
    "Q5_K_S": (5, "large; low quality loss"),
    "Q5_K_M": (5, "large; very low quality loss"),
    "Q6_K": (6, "very large; extremely low quality loss"),
    "Q8_0": (8, "very large; nearly lossless, rarely needed"),
    "F16": (16, "unquantized 16-bit"),
    "BF16": (16, "unquantized bfloat16"),
}


@dataclass(frozen=True)
class Row:
    """One published variant, as the card shows it."""

    variant: Variant
    report: Report

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


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _front_matter(c: CardInputs) -> str:
    base = c.project.config.base_model
    cfg = c.project.config
    data = ModelCardData(
        base_model=base.id, inference=False, license=base.license, model_creator=base.creator,
        model_name=base.display_name, model_type=c.model_type, prompt_template=cfg.prompt_template,
        quantized_by=cfg.quantized_by or c.repo.split("/")[0],
        tags=[c.format, "quantized", f"{min(r.variant.spec.bits for r in c.rows)}-bit"] if c.format != "gguf"
        else ["gguf", "quantized", "llama.cpp"],
    )
    return f"---\n{yaml.dump(data.to_dict(), Dumper=_CardDumper, sort_keys=False, allow_unicode=True).strip()}\n---\n"


class _CardDumper(yaml.SafeDumper):
    """Multi-line strings (the prompt template) as literal blocks, the way people write them in cards."""


_CardDumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def _title(c: CardInputs) -> str:
    base = c.project.config.base_model
    creator = base.creator or (base.id.split("/")[0] if base.id else None)
    lines = [f"# {base.display_name} - {FORMAT_TITLES[c.format]}", ""]
    if creator:
        lines.append(f"- Model creator: {creator}")
    if base.id:
        lines.append(f"- Original model: [{base.display_name}]({HUB}/{base.id})")
    engine = {"gptq": "gptqmodel", "awq": "gptqmodel", "gguf": "llama.cpp (llama-cpp-python)"}[c.format]
    versions = c.rows[0].report.versions
    made = f"{engine} {versions.get('gptqmodel' if c.format != 'gguf' else 'llama-cpp-python', '')}".strip()
    ev = next((r.report.checks.eval for r in c.rows if r.report.checks), None)
    lines += ["", "## Description", "",
              f"{FORMAT_TITLES[c.format]} files of {creator + chr(39) + 's ' if creator else ''}{base.display_name}, made with {made} by "
              f"quantize {__version__}. Each file was checked against the unquantized model before it was "
              "published, and the figures below were measured on the published bytes: perplexity and KL divergence"
              + (f" on {ev.source} ({ev.windows} windows of {ev.n_ctx} tokens, {ev.scored_tokens:,} scored tokens, "
                 "second half of each window as llama.cpp's `perplexity` scores it)" if ev else "")
              + ", memory, and a short chat in the prompt template below."]
    return "\n".join(lines)


def _family(c: CardInputs) -> str:
    base = c.project.config.base_model
    what = {"awq": "AWQ model(s) for GPU inference", "gptq": "GPTQ models for GPU inference, with several parameter choices",
            "gguf": "GGUF models for CPU (and GPU offload) inference with llama.cpp"}
    lines = ["## Repositories available", ""]
    for fmt in ("awq", "gptq", "gguf"):
        if fmt in c.family:
            here = " (this repo)" if c.family[fmt] == c.repo else ""
            lines.append(f"* [{what[fmt]}]({HUB}/{c.family[fmt]}){here}")
    if base.id:
        lines.append(f"* [{base.creator or base.id.split('/')[0]}'s original unquantized model]({HUB}/{base.id})")
    return "\n".join(lines)


def _template(c: CardInputs) -> str:
    return f"## Prompt template\n\n```\n{c.project.config.prompt_template}\n```"


def _vram(r: Row) -> str:
    m = r.report.checks.memory if r.report.checks else None
    if m and m.peak_cuda_bytes:
        return _gb(m.peak_cuda_bytes)
    if m and m.predicted_run_bytes:
        return f"~{_gb(m.predicted_run_bytes)}"
    return "-"


def _quality(r: Row) -> list[str]:
    ch = r.report.checks
    return [_num(ch and ch.ppl, ".3f"), _num(ch and ch.ppl_delta, "+.3f"), _num(ch and ch.mean_kld, ".4f")]


def _gptq_desc(v: Variant) -> str:
    spec = v.spec
    grouping = {-1: "No grouping: the smallest file at this bit width, the least accurate",
                32: "Group size 32: the most accurate at this bit width, the largest file",
                64: "Group size 64: between 32g and 128g in accuracy and size",
                128: "Group size 128: the usual balance of accuracy and size"}.get(
        spec.group_size, f"Group size {spec.group_size}")
    text = grouping + ("; act order" if getattr(spec, "desc_act", False) else "")
    if spec.bits == 8:
        text += "; 8-bit is close to the unquantized model at about twice the 4-bit size"
    return text + "."


def _branch_cell(c: CardInputs, v: Variant) -> str:
    # f-strings only: the repo is the user's text, and str.format would read braces in it.
    if v.default:
        return f"[main]({HUB}/{c.repo}/tree/main) (= {v.branch})"
    return f"[{v.branch}]({HUB}/{c.repo}/tree/{v.branch})"


def _calibration(r: Report) -> tuple[str, str]:
    cal = r.inputs.calibration
    return (cal.recipe, str(cal.seq_len)) if cal else ("-", "-")


def _table(head: list[str], base: list[str] | None, rows: list[list[str]]) -> str:
    """A Markdown table; `base` (the unquantized model's row) goes first when there is one."""
    lines = [head, ["---"] * len(head)] + ([base] if base else []) + rows
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _base_ppl(c: CardInputs) -> float | None:
    return next((r.report.checks.base_ppl for r in c.rows if r.report.checks), None)


def _weights_table(c: CardInputs) -> str:
    head = ["Branch", "Bits", "GS", "Act Order", "Damp %", "GPTQ Dataset", "Seq Len", "Size", "ExLlama",
            "PPL", "Δ PPL", "KLD", "VRAM", "Desc"]
    base_ppl = _base_ppl(c)
    base = None if base_ppl is None else (["unquantized", "16"] + ["-"] * 7 + [f"{base_ppl:.3f}"] + ["-"] * 3
                                          + ["the original model, for reference"])
    rows = []
    for r in sorted(c.rows, key=lambda r: (not r.variant.default, r.variant.spec.bits, r.variant.spec.group_size)):
        spec, v = r.variant.spec, r.variant
        dataset, seq = _calibration(r.report)
        act = str(getattr(spec, "desc_act", "-")) if c.format == "gptq" else "-"
        damp = f"{spec.damp_percent:g}" if c.format == "gptq" else "-"
        exllama = "Yes" if spec.bits == 4 else "No"
        desc = _gptq_desc(v) if c.format == "gptq" else f"AWQ {spec.bits}-bit, group size {spec.group_size}, zero point, GEMM."
        rows.append([_branch_cell(c, v), str(spec.bits), str(spec.group_size), act, damp, dataset, seq, _gb(r.size),
                     exllama, *_quality(r), _vram(r), desc])
    return _table(head, base, rows)


def _gguf_table(c: CardInputs) -> str:
    head = ["Name", "Quant method", "Bits", "Size", "Max RAM required", "PPL", "Δ PPL", "KLD", "Use case"]
    base_ppl = _base_ppl(c)
    base = None if base_ppl is None else ["unquantized", "-", "16", "-", "-", f"{base_ppl:.3f}", "-", "-",
                                          "the original model, for reference"]
    rows = []
    for r in sorted(c.rows, key=lambda r: (r.report.bits_per_weight, r.variant.name)):
        spec = r.variant.spec
        nominal, use = GGUF_USE.get(spec.quant_type, (None, ""))
        name = _gguf_name(r)
        method = spec.quant_type + (" + imatrix" if spec.imatrix else "")
        if spec.imatrix:
            use += f"; importance matrix from {spec.imatrix}"
        m = r.report.checks.memory if r.report.checks else None
        ram = _gb(m.max_ram_required_bytes) if m and m.max_ram_required_bytes else "-"
        bits = f"{nominal if nominal is not None else '-'} ({r.report.bits_per_weight:.2f} bpw)"
        rows.append([f"[{name}]({HUB}/{c.repo}/blob/main/{name}) (branch `{r.variant.branch}`)", method, bits,
                     _gb(r.size), ram, *_quality(r), use])
    return (_table(head, base, rows) + "\n\nMax RAM required assumes no GPU offloading: the file size plus 2.5 GB. "
            "Offloading layers to a GPU moves that memory to VRAM.")


def _provided(c: CardInputs) -> str:
    if c.format == "gguf":
        return "## Provided files\n\n" + _gguf_table(c)
    intro = ("Each branch holds one set of parameters; `main` holds the default. PPL and KLD are measured against the "
             "unquantized model on held-out text (lower is better); Δ PPL is the increase over it. VRAM is the peak "
             "measured on a GPU for one forward pass at the calibration sequence length, or `~` a prediction from "
             "config.json where no GPU was used. Bits and GS are the quantization bits and group size (-1: none); "
             "Act Order is GPTQ's `desc_act`; Damp % its dampening; the dataset and sequence length are those of "
             "the calibration samples, which are not the training data. ExLlama reads 4-bit files only.")
    title = "## Provided files, and GPTQ parameters" if c.format == "gptq" else "## Provided files, and AWQ parameters"
    return f"{title}\n\n{intro}\n\n{_weights_table(c)}"


def _example_gguf(c: CardInputs) -> Row:
    """The row the examples use: Q4_K_M when there is one, as most users want it."""
    return next((r for r in c.rows if r.variant.spec.quant_type == "Q4_K_M"), c.rows[0])


def _gguf_name(row: Row) -> str:
    return next(f.path for f in row.report.files if f.path.endswith(".gguf"))


def _download(c: CardInputs) -> str:
    repo = c.repo
    if c.format == "gguf":
        row = _example_gguf(c)
        return "\n".join([
            "## How to download", "",
            "Every file is on `main` and on its own branch. Fetch just the one you need:", "",
            "```shell", f"hf download {repo} {_gguf_name(row)} --local-dir .",
            f"hf download {repo} --revision {row.variant.branch} --local-dir {row.variant.branch}", "```", "",
            "With huggingface_hub older than 1.0 the command is `huggingface-cli download` with the same arguments.",
        ])
    example = next((r.variant.branch for r in c.rows if not r.variant.default), c.rows[0].variant.branch)
    return "\n".join([
        "## How to download from branches", "",
        f"- In text-generation-webui, enter `{repo}:{example}` in the download box (`{repo}` alone gets `main`).",
        "- From the command line:", "",
        "```shell", f"hf download {repo} --revision {example} --local-dir {repo.split('/')[-1]}", "```", "",
        "With huggingface_hub older than 1.0: "
        f"`huggingface-cli download {repo} --revision {example} --local-dir {repo.split('/')[-1]}`.",
        "- From Python: `snapshot_download(repo_id, revision=BRANCH)`.",
    ])


def _usage(c: CardInputs) -> str:
    repo, cfg = c.repo, c.project.config
    prompt = cfg.prompt_template.replace("{system}", cfg.system_prompt or "").replace("{prompt}", "Tell me about AI")
    if c.format == "gguf":
        first = _gguf_name(_example_gguf(c))
        return "\n".join([
            "## How to run it", "", "llama.cpp, as a chat (the prompt template is in the file):", "",
            "```shell", f"llama-cli -m {first} -c 2048 -cnv", "```", "", "or with a raw prompt:", "",
            "```shell", f"llama-cli -m {first} -c 2048 --temp 0.7 -e -p {prompt!r}", "```", "",
            "llama-cpp-python:", "", "```python", "from llama_cpp import Llama", "",
            f"llm = Llama(model_path={first!r}, n_ctx=2048)",
            f"print(llm({prompt!r}, max_tokens=256)['choices'][0]['text'])", "```",
        ])
    quant = c.format
    return "\n".join([
        "## How to run it", "",
        "transformers (5.x loads GPTQ and AWQ through gptqmodel: `pip install transformers gptqmodel`):", "",
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f"repo, branch = {repo!r}, 'main'",
        "tokenizer = AutoTokenizer.from_pretrained(repo, revision=branch)",
        "model = AutoModelForCausalLM.from_pretrained(repo, revision=branch, device_map='auto')",
        "messages = [{'role': 'user', 'content': 'Tell me about AI'}]",
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt').to(model.device)",
        "output = model.generate(inputs, max_new_tokens=256)",
        "print(tokenizer.decode(output[0][inputs.shape[1]:], skip_special_tokens=True))", "```", "",
        "vLLM:", "", "```shell", f"vllm serve {repo} --revision main --quantization {quant}", "```",
        "",
        "## Compatibility", "",
        "The files follow the layout AutoGPTQ/AutoAWQ wrote and transformers, vLLM, TGI and text-generation-webui read"
        + (": `quantize_config.json` and `config.json` carry the same parameters (`checkpoint_format: gptq`)."
           if quant == "gptq" else ": `quant_config.json` and `config.json` carry the same parameters (GEMM, zero point)."),
        "vLLM's Marlin kernels take symmetric 4- and 8-bit files with group size -1, 32, 64 or 128.",
    ])


def _original(c: CardInputs) -> str:
    base = c.project.config.base_model
    who = f"{base.creator}'s " if base.creator else ""
    if not c.base_card:
        where = f" See [{base.id}]({HUB}/{base.id})." if base.id else ""
        return f"# Original model card: {who}{base.display_name}\n\nThe original card was not available when this card was written.{where}"
    body = re.sub(r"\A\s*---\n.*?\n---\n", "", c.base_card, count=1, flags=re.S).strip()
    return f"# Original model card: {who}{base.display_name}\n\n{body}"


def render(c: CardInputs) -> str:
    parts = [_front_matter(c), _title(c), _family(c), _template(c), _provided(c), _download(c), _usage(c)]
    if c.has_plot:
        parts.append(f"## Size against quality\n\nEvery variant of the family, file size against mean KL divergence "
                     f"from the unquantized model:\n\n![size against KLD]({PLOT_NAME})")
    parts += ["<!-- original-model-card start -->", _original(c), "<!-- original-model-card end -->"]
    return "\n\n".join(p.strip("\n") for p in parts) + "\n"


# -- gathering ------------------------------------------------------------------------------

def published_rows(project: Project, out_root: Path) -> dict[str, list[Row]]:
    """Variants that passed their checks, grouped by repo: what a card may list."""
    rows: dict[str, list[Row]] = {}
    for variant in project.variants:
        report = read_report(out_root / variant.branch)
        if report is not None and report.status == "passed":
            rows.setdefault(variant.repo, []).append(Row(variant, report))
    return rows


def base_card(project: Project) -> str | None:
    """The base model's README.md: from its local folder, or the hub when it can be reached."""
    spec = project.config.base_model
    if spec.path is not None:
        path = (spec.path if spec.path.is_absolute() else project.root / spec.path) / "README.md"
        return path.read_text() if path.is_file() else None
    if spec.id and spec.pypi_gguf is None:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(spec.id, "README.md", revision=spec.revision)).read_text()
        except Exception as err:  # offline or no card: the card says so
            log.warning("no original model card for %s: %s", spec.id, type(err).__name__)
    return None


def card_dir(out_root: Path, repo: str) -> Path:
    return out_root / "cards" / repo.replace("/", "__")


def write_cards(project: Project, out_root: Path) -> dict[str, Path]:
    """Write README.md (and the comparison plot) for every repo with a passed variant; repo -> folder."""
    from .basemodel import resolve_config
    from .compare import collect, plot

    grouped = published_rows(project, out_root)
    if not grouped:
        return {}
    config, _ = resolve_config(project)
    original = base_card(project)
    family = {v.format: v.repo for v in project.variants}
    table = collect(project, out_root)
    table.rows = [r for r in table.rows if r["gate"] == "pass"]
    folders = {}
    for repo, rows in grouped.items():
        folder = card_dir(out_root, repo)
        folder.mkdir(parents=True, exist_ok=True)
        plot(table, folder / PLOT_NAME)
        inputs = CardInputs(project=project, repo=repo, format=rows[0].variant.format, rows=rows,
                            model_type=config.get("model_type"), base_card=original, family=family, has_plot=True)
        write_atomic(folder / "README.md", render(inputs).encode())
        log.info("card for %s: %s (%d variants)", repo, folder / "README.md", len(rows))
        folders[repo] = folder
    for stale in (out_root / "cards").iterdir():
        if stale not in folders.values() and stale.is_dir():
            shutil.rmtree(stale)
    return folders
