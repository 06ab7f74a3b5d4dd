"""variants.yaml: names, matrix expansion and one-line errors, all before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli

from quantize.errors import ConfigError, UnknownVariantError
from quantize.project import load_config, parse_config

THEBLOKE_GPTQ_BRANCHES = {
    "gptq-4bit-32g-actorder_True",
    "gptq-4bit-64g-actorder_True",
    "gptq-8bit--1g-actorder_True",
    "gptq-8bit-128g-actorder_True",
    "gptq-8bit-32g-actorder_True",
}


def base_doc(**over) -> dict:
    doc = {
        "base_model": {"id": "org/model"},
        "prompt_template": "<|user|>\n{prompt}</s>\n<|assistant|>\n",
        "calibration": "wikitext2",
        "variants": [{"format": "gptq", "bits": 4, "group_size": 128}],
    }
    doc.update(over)
    return doc


def error_of(doc: dict, tmp_path: Path) -> str:
    file = tmp_path / "variants.yaml"
    file.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        load_config(file)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(file))
    return message


def test_zephyr_matrix_matches_thebloke_branches():
    project = load_config(ROOT / "variants.yaml")
    gptq = [v for v in project.variants if v.format == "gptq"]
    default = [v for v in gptq if v.default]
    assert len(default) == 1 and default[0].branch == "gptq-4bit-128g-actorder_True"
    assert {v.branch for v in gptq} - {default[0].branch} == THEBLOKE_GPTQ_BRANCHES
    assert all(v.params()["damp_percent"] == 0.1 and v.params()["desc_act"] for v in gptq)
    assert all(v.calibration == "wikitext2" for v in gptq)
    assert project.variant("gptq-8bit").branch == "gptq-8bit--1g-actorder_True"
    assert {v.format for v in project.variants} == {"gptq", "awq", "gguf", "mlx"}
    assert project.variant("gguf-i1-q4_k_m").repo.endswith("-GGUF")
    mlx = {v.branch: v for v in project.variants if v.format == "mlx"}
    assert set(mlx) == {"mlx-4bit", "mlx-8bit", "mlx-mixed_3_6"} and mlx["mlx-4bit"].default
    assert mlx["mlx-4bit"].repo == "your-hub-user/zephyr-7B-beta-MLX"


def test_variant_lookup_by_short_or_branch_name():
    project = load_config(ROOT / "variants.yaml")
    assert project.variant("gptq-4bit-32g") is project.variant("gptq-4bit-32g-actorder_True")
    with pytest.raises(UnknownVariantError) as info:
        project.variant("gptq-3bit")
    assert "gptq-4bit-32g" in str(info.value) and "gguf-i1-q4_k_m" in str(info.value)


def test_matrix_include_exclude(tmp_path):
    doc = base_doc(
        variants=[
            {
                "format": "gptq",
                "matrix": {"bits": [4, 8], "group_size": [32, 128], "desc_act": [True, False]},
                "exclude": [{"bits": 8, "desc_act": False}],
                "include": [
                    {"bits": 4, "group_size": 128, "desc_act": True, "default": True},
                    {"bits": 8, "group_size": -1, "desc_act": True},
                ],
            }
        ]
    )
    project = parse_config(doc, tmp_path / "v.yaml")
    names = [v.name for v in project.variants]
    assert names == [
        "gptq-4bit-32g",
        "gptq-4bit-32g-noact",
        "gptq-4bit-128g",
        "gptq-4bit-128g-noact",
        "gptq-8bit-32g",
        "gptq-8bit-128g",
        "gptq-8bit",
    ]
    assert [v.name for v in project.variants if v.default] == ["gptq-4bit-128g"]
    assert project.variant("gptq-4bit-32g-noact").branch == "gptq-4bit-32g-actorder_False"


@pytest.mark.parametrize(
    "doc, field, words",
    [
        (base_doc(variants=[{"format": "gptq", "bits": 4, "group_sise": 32}]), "variants[0].group_sise", "unknown key"),
        (base_doc(variants=[{"format": "gptq", "bits": 3}]), "variants[0].bits", "4 or 8"),
        (base_doc(variants=[{"format": "awq", "bits": 8}]), "variants[0].bits", "AWQ takes 4"),
        (base_doc(variants=[{"format": "gptq", "group_size": 48}]), "variants[0].group_size", "power of two"),
        (base_doc(variants=[{"format": "gptq", "group_size": 0}]), "variants[0].group_size", "-1"),
        (base_doc(variants=[{"format": "gguf", "quant_type": "Q4_K_X"}]), "variants[0].quant_type", "Q4_K_M"),
        (base_doc(variants=[{"format": "exl2"}]), "variants[0].format", "gptq, awq, gguf or mlx"),
        (base_doc(base_model=None), "base_model", "base_model: {id"),
        ({k: v for k, v in base_doc().items() if k != "base_model"}, "base_model", "required"),
        (base_doc(base_model={"revision": "main"}), "base_model", "give `id`"),
        (base_doc(prompt_template="no placeholder"), "prompt_template", "{prompt}"),
        (base_doc(calibration="nosuch"), "calibration", "wikitext2"),
        (base_doc(variants=[{"format": "gptq", "bits": 4}, {"format": "gptq", "bits": 4}]), "variants", "both named"),
        (
            base_doc(
                variants=[
                    {"format": "gptq", "bits": 4, "default": True},
                    {"format": "gptq", "bits": 8, "default": True},
                ]
            ),
            "variants.default",
            "exactly one",
        ),
        (
            base_doc(variants=[{"format": "gptq", "bits": 4}, {"format": "gptq", "bits": 8}]),
            "variants.default",
            "none is",
        ),
        (base_doc(variants=[{"format": "gptq", "matrix": {"bits": 4}}]), "variants[0]", "non-empty list"),
    ],
)
def test_bad_config_is_one_line_naming_file_field_and_fix(tmp_path, doc, field, words):
    message = error_of(doc, tmp_path)
    assert f": {field}" in message, message
    assert words in message, message
    assert "fix:" in message, message


def test_matrix_error_names_the_combination(tmp_path):
    doc = base_doc(variants=[{"format": "gptq", "matrix": {"bits": [4, 3]}}])
    message = error_of(doc, tmp_path)
    assert "variants[0] (bits=3)" in message


def test_cli_list_and_errors(tmp_path):
    listed = run_cli("list", "--config", str(ROOT / "variants.yaml"), check=True)
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "BRANCH", "FORMAT"]
    assert any("gptq-4bit-128g-actorder_True (+main)" in line for line in lines)
    assert any(line.startswith("gptq-8bit ") and "gptq-8bit--1g-actorder_True" in line for line in lines)

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(base_doc(variants=[{"format": "gptq", "bits": 3}])))
    proc = run_cli("list", "--config", str(bad))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "bits" in proc.stderr

    proc = run_cli("build", "--config", str(ROOT / "variants.yaml"), "--variant", "gptq-5bit", "--out", str(tmp_path))
    assert proc.returncode == 2 and "valid: gptq-4bit-32g" in proc.stderr

    bad.write_text("variants: [\n")
    proc = run_cli("list", "--config", str(bad))
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr
