"""The model card: layout held by golden files, content checked against the reports it is made from.

Regenerate the golden files after an intended change with `UPDATE_GOLDEN=1 python -m pytest tests/test_card.py`
and read the diff.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from quantize.card import CardInputs, Row, render
from quantize.manifest import from_report
from quantize.project import load_config
from quantize.records import Report

GOLDEN = Path(__file__).parent / "golden" / "card"


def inputs(repo: str) -> CardInputs:
    project = load_config(GOLDEN / "variants.yaml")
    reports = {
        v.branch: Report.model_validate_json((GOLDEN / "reports" / f"{v.branch}.json").read_text())
        for v in project.variants
    }
    rows = [
        Row(v, reports[v.branch], from_report(reports[v.branch], project.config.base_model.id))
        for v in project.variants
        if v.repo == repo
    ]
    return CardInputs(
        project=project,
        repo=repo,
        format=rows[0].variant.format,
        rows=rows,
        model_type="mistral",
        base_card=(GOLDEN / "original.md").read_text(),
        family={v.format: v.repo for v in project.variants},
        has_plot=True,
    )


@pytest.mark.parametrize("repo", ["tester/tiny-mistral-GPTQ", "tester/tiny-mistral-GGUF"])
def test_card_matches_golden_file(repo):
    card = render(inputs(repo))
    golden = GOLDEN / f"{repo.split('/')[1]}.md"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(card)
    assert card == golden.read_text()


def test_front_matter_is_what_the_hub_reads():
    card = render(inputs("tester/tiny-mistral-GPTQ"))
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == "HuggingFaceH4/zephyr-7b-beta" and meta["inference"] is False
    assert meta["prompt_template"] == "<|system|>\n{system}</s>\n<|user|>\n{prompt}</s>\n<|assistant|>\n"
    assert meta["model_creator"] == "Hugging Face H4" and meta["license"] == "mit" and meta["model_type"] == "mistral"
    assert meta["quantized_by"] == "tester" and "gptq" in meta["tags"]


@pytest.mark.parametrize(
    ("repo", "library"), [("tester/tiny-mistral-GPTQ", "transformers"), ("tester/tiny-mistral-GGUF", "gguf")]
)
def test_front_matter_files_the_repo_as_a_quantization_and_round_trips(repo, library):
    """The hub's own parser (huggingface_hub.ModelCard) reads the relation, the library and every other key back."""
    from huggingface_hub import ModelCard

    card = render(inputs(repo))
    written = yaml.safe_load(card.split("---\n")[1])
    assert written["base_model_relation"] == "quantized" and written["library_name"] == library
    assert written["pipeline_tag"] == "text-generation"
    parsed = ModelCard(card)
    assert parsed.data.to_dict() == written and parsed.data.library_name == library
    assert ModelCard(str(parsed)).data.to_dict() == written  # and survives being written again


def test_provided_files_rows_come_from_the_reports():
    c = inputs("tester/tiny-mistral-GPTQ")
    card = render(c)
    table = [line for line in card.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == [
        "Branch",
        "Bits",
        "GS",
        "Act Order",
        "Damp %",
        "GPTQ Dataset",
        "Seq Len",
        "Size",
        "Loads in",
        "PPL",
        "Δ PPL",
        "KLD",
        "Chat KLD",
        "Smoke",
        "VRAM",
        "Desc",
    ]
    for row in c.rows:
        line = next(line for line in table if row.variant.branch in line)
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        ch = row.report.checks
        assert cells[9] == f"{ch.ppl:.3f}" and cells[10] == f"{ch.ppl_delta:+.3f}" and cells[11] == f"{ch.mean_kld:.4f}"
        assert cells[12] == f"{ch.chat.mean_kld:.4f}"
        assert cells[13] == f"{ch.smoke.passed}/{ch.smoke.prompts} (base {ch.smoke.base_passed})"
        assert cells[1] == str(row.variant.spec.bits) and cells[6] == str(row.report.inputs.calibration.seq_len)
    assert re.search(
        r"\| \[main\]\(.*\) \(= gptq-4bit-32g-actorder_True\) \| 4 \| 32 \| True \(static\) \| 0\.1 \|", card
    )
    # Client claims come from the tested table: 4-bit loads in vLLM, 8-bit (CPU build) does not.
    four = next(line for line in table if "(= gptq-4bit-32g-actorder_True)" in line)
    eight = next(line for line in table if line.startswith("| [gptq-8bit-32g-actorder_True]"))
    assert "| transformers, vLLM |" in four and "| transformers |" in eight and "ExLlama" not in four
    assert "| gptq-8bit-32g-actorder_True | yes | no | untested | untested |" in card
    assert (
        "--quantization" not in card and "vllm serve tester/tiny-mistral-GPTQ --revision main --dtype float16" in card
    )
    # The original card follows, without its own front matter.
    assert card.count("---\n") == 2 and "# Model Card for Zephyr 7B β" in card.split("original-model-card start")[1]


def test_gguf_card_lists_every_file_with_max_ram():
    c = inputs("tester/tiny-mistral-GGUF")
    card = render(c)
    for row in c.rows:
        name = row.report.files[0].path
        line = next(line for line in card.splitlines() if line.startswith(f"| [{name}]"))
        assert f"(branch `{row.variant.branch}`)" in line
        ram = row.report.checks.memory.max_ram_required_bytes
        assert f"{ram / 1e9:.2f} GB" in line and row.variant.spec.quant_type in line
    assert "hf download tester/tiny-mistral-GGUF" in card and "llama-cli -m" in card
