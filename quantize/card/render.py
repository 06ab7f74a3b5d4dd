"""`card`: one README.md per output repo, written from the variants' reports.

A card people trust says what each file is, how it was made and how much it lost, in
numbers measured on the published bytes. Everything here comes from report.json files
and the config, the quality figures through the manifest each branch carries
(`quantize.json`, written here beside each variant's files); `render` is a pure function
of `CardInputs`, so the layout is held by golden-file tests.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import yaml
from huggingface_hub import ModelCardData

from .. import __version__, formats, manifest
from ..basemodel import resolve_config
from ..config import Project
from ..formats.sections import CardInputs, Row, first_checks
from ..outputs import PLOT_NAME, built_report, variant_folder
from ..paths import write_atomic, write_json
from ..weblinks import HF_WEB, Links, base_links
from .compare import collect, plot

log = logging.getLogger(__name__)


def _front_matter(c: CardInputs) -> str:
    base = c.project.config.base_model
    cfg = c.project.config
    # `base_model_relation: quantized` files the repo under the base's "Quantizations": the hub infers the relation
    # from the files on main, and repos whose variants live on branches are otherwise shown as fine-tunes.
    data = ModelCardData(
        base_model=base.id,
        base_model_relation="quantized",
        library_name=formats.get(c.format).library_name,
        pipeline_tag="text-generation",
        inference=False,
        license=base.license,
        model_creator=base.creator,
        model_name=base.display_name,
        model_type=c.model_type,
        prompt_template=cfg.prompt_template,
        quantized_by=cfg.quantized_by or c.repo.split("/")[0],
        tags=formats.get(c.format).card_tags(c.rows),
    )
    return f"---\n{yaml.dump(data.to_dict(), Dumper=_CardDumper, sort_keys=False, allow_unicode=True).strip()}\n---\n"


class _CardDumper(yaml.SafeDumper):
    """Multi-line strings (the prompt template) as literal blocks, the way people write them in cards."""


_CardDumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)
)


def _title(c: CardInputs) -> str:
    base = c.project.config.base_model
    creator = base.creator or (base.id.split("/")[0] if base.id else None)
    fmt = formats.get(c.format)
    lines = [f"# {base.display_name} - {fmt.title}", ""]
    if creator:
        lines.append(f"- Model creator: {creator}")
    if base.id:
        lines.append(f"- Original model: [{base.display_name}]({base_links().repo(base.id)})")
    made = fmt.card_engine(c.rows)
    checks = first_checks(c)
    ev = checks.eval if checks else None
    lines += [
        "",
        "## Description",
        "",
        f"{fmt.title} files of {creator + chr(39) + 's ' if creator else ''}{base.display_name}, made with {made} by "
        f"quantize {__version__}. Each file was checked against the unquantized model before it was "
        "published, and the figures below were measured on the published bytes: perplexity and KL divergence"
        + (
            f" on {ev.source} ({ev.windows} windows of {ev.n_ctx} tokens, {ev.scored_tokens:,} scored tokens, "
            "second half of each window as llama.cpp's `perplexity` scores it)"
            if ev
            else ""
        )
        + ", memory, and a short chat in the prompt template below.",
    ]
    if checks is not None and checks.chat is not None:
        ch = checks.chat.eval
        lines += [
            "",
            f"Chat KLD is the same divergence on the assistant turns of {ch.conversations} conversations in that "
            f"template ({ch.scored_tokens:,} tokens), the unquantized model's own greedy replies being the turns.",
        ]
    if checks is not None and checks.smoke is not None:
        lines += [
            "",
            f"Smoke counts the greedy replies to {checks.smoke.prompts} chat prompts (facts, instructions, lists, "
            "translation, arithmetic, code, a persona, two-turn) that are not empty, leak no role marker and do "
            "not loop, beside the unquantized model's count on the same prompts: a file fails only for a "
            "problem the unquantized model's reply does not have.",
        ]
    return "\n".join(lines)


def _family(c: CardInputs) -> str:
    base = c.project.config.base_model
    lines = ["## Repositories available", ""]
    for fmt in sorted(formats.FORMATS.values(), key=lambda f: f.family_rank):
        if fmt.name in c.family:
            here = " (this repo)" if c.family[fmt.name] == c.repo else ""
            lines.append(f"* [{fmt.family_line}]({c.links.repo(c.family[fmt.name])}){here}")
    if base.id:
        owner = base.creator or base.id.split("/")[0]
        lines.append(f"* [{owner}'s original unquantized model]({base_links().repo(base.id)})")
    return "\n".join(lines)


def _template(c: CardInputs) -> str:
    return f"## Prompt template\n\n```\n{c.project.config.prompt_template}\n```"


def _original(c: CardInputs) -> str:
    base = c.project.config.base_model
    who = f"{base.creator}'s " if base.creator else ""
    if not c.base_card:
        where = f" See [{base.id}]({base_links().repo(base.id)})." if base.id else ""
        return (
            f"# Original model card: {who}{base.display_name}\n\n"
            f"The original card was not available when this card was written.{where}"
        )
    body = re.sub(r"\A\s*---\n.*?\n---\n", "", c.base_card, count=1, flags=re.S).strip()
    return f"# Original model card: {who}{base.display_name}\n\n{body}"


def _elsewhere(c: CardInputs) -> str:
    """Where the run commands below must look, when the card is not published to huggingface.co."""
    if c.links.root == HF_WEB:
        return ""
    if c.links.web:
        return (
            f"This repository is on {c.links.root}, not huggingface.co: set `HF_ENDPOINT={c.links.root}` before "
            f"the commands below, so huggingface_hub (and what downloads through it) asks that hub for `{c.repo}`."
        )
    return (
        f"This repository is published to a git remote ({c.links.repo(c.repo)}), not a hub: clone its branch "
        f"as above and pass the folder in place of `{c.repo}` in the commands below."
    )


def render(c: CardInputs) -> str:
    fmt = formats.get(c.format)
    parts = [
        _front_matter(c),
        _title(c),
        _family(c),
        _template(c),
        fmt.card_provided(c),
        fmt.card_download(c),
        _elsewhere(c),
        fmt.card_usage(c),
    ]
    if c.has_plot:
        parts.append(
            f"## Size against quality\n\nEvery variant of the family, file size against mean KL divergence "
            f"from the unquantized model:\n\n![size against KLD]({PLOT_NAME})"
        )
    parts += ["<!-- original-model-card start -->", _original(c), "<!-- original-model-card end -->"]
    return "\n\n".join(p.strip("\n") for p in parts if p) + "\n"


# -- gathering ------------------------------------------------------------------------------


def published_rows(project: Project, out_root: Path) -> dict[str, list[Row]]:
    """Variants that passed their checks, grouped by repo: what a card may list."""
    rows: dict[str, list[Row]] = {}
    for variant in project.variants:
        report = built_report(out_root, variant)
        if report is not None and report.status == "passed":
            rows.setdefault(variant.repo, []).append(
                Row(variant, report, manifest.from_report(report, project.config.base_model.id))
            )
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


# Beside each README.md (never published): the destination its links were written for, which `publish` checks.
CARD_RECORD = "card.json"


def written_for(folder: Path) -> Links | None:
    """The destination a card folder's links name; None for a card written before links were recorded."""
    try:
        data = json.loads((folder / CARD_RECORD).read_text(encoding="utf-8"))
        return Links(**data["links"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cards(project: Project, out_root: Path, links: Links | None = None) -> dict[str, Path]:
    """Write README.md (and the comparison plot) for every repo with a passed variant; repo -> folder.

    `links`: the destination `publish` will send them to (default: HF_ENDPOINT or huggingface.co)."""
    links = links or Links.endpoint()
    grouped = published_rows(project, out_root)
    if not grouped:
        return {}
    config, _ = resolve_config(project)
    original = base_card(project)
    # only repos that will hold a passed variant: a card never links a repo that is not there
    family = {v.format: v.repo for v in project.variants if v.repo in grouped}
    table = collect(project, out_root)
    table.rows = [r for r in table.rows if r["gate"] == "pass"]
    folders = {}
    for repo, rows in grouped.items():
        for row in rows:  # the quantize.json publish sends beside the files: the figures the card shows
            manifest.write(variant_folder(out_root, row.variant), row.manifest)
        folder = card_dir(out_root, repo)
        folder.mkdir(parents=True, exist_ok=True)
        plot(table, folder / PLOT_NAME)
        inputs = CardInputs(
            project=project,
            repo=repo,
            format=rows[0].variant.format,
            rows=rows,
            model_type=config.get("model_type"),
            base_card=original,
            family=family,
            has_plot=True,
            links=links,
        )
        write_atomic(folder / "README.md", render(inputs).encode())
        write_json(folder / CARD_RECORD, {"links": asdict(links)})
        log.info("card for %s: %s (%d variants)", repo, folder / "README.md", len(rows))
        folders[repo] = folder
    for stale in (out_root / "cards").iterdir():
        if stale not in folders.values() and stale.is_dir():
            shutil.rmtree(stale)
    return folders
