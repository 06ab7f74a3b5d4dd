"""Checks: one perplexity protocol for every format, KL divergence, gates, smoke chat, the comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_GATES, run_cli, write_config

from quantize.checks.smoke import reply_problems
from quantize.scoring import hf_logits_fn, reference, score


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    work = tmp_path_factory.mktemp("checks")
    variants = [
        {
            "format": "gptq",
            "matrix": {"bits": [8, 4], "group_size": [32]},
            "include": [{"bits": 4, "group_size": 32, "default": True}],
        },
        {"format": "gguf", "matrix": {"quant_type": ["F16", "Q8_0", "Q4_K_M"]}},
    ]
    config = write_config(work, tiny_model, variants)
    out = work / "out"
    run_cli("build", "--config", str(config), "--out", str(out), "--all", cwd=work, check=True)
    reports = {p.name: json.loads((p / "report.json").read_text()) for p in out.iterdir() if p.is_dir()}
    return {"work": work, "config": config, "out": out, "reports": reports, "base": tiny_model}


def test_hf_and_f16_gguf_give_the_same_perplexity(built):
    f16 = built["reports"]["gguf-f16"]["checks"]
    assert f16["ppl"] == pytest.approx(f16["base_ppl"], rel=2e-3)
    assert f16["mean_kld"] < 1e-4 and f16["top1_agreement"] > 0.99
    assert f16["eval"]["scored_tokens"] == 4 * 63 and f16["eval"]["n_ctx"] == 128


def test_kld_is_zero_for_the_base_against_itself(built):
    from transformers import AutoTokenizer

    from quantize.basemodel import resolve_base
    from quantize.evalset import eval_set, find_eval
    from quantize.project import load_config

    project = load_config(built["config"])
    base = resolve_base(project)
    windows = eval_set(
        find_eval(project.root, "tiny-heldout"), AutoTokenizer.from_pretrained(base.path), base.tokenizer_hash
    ).windows
    fn = hf_logits_fn(base.path, dtype=torch.float32)
    scores = score(windows, fn, reference(windows, fn))
    assert scores.mean_kld < 1e-9 and scores.top1_agreement == 1.0
    assert scores.ppl == pytest.approx(built["reports"]["gguf-f16"]["checks"]["base_ppl"], rel=1e-6)


def test_kld_grows_from_8_bit_to_4_bit(built):
    r = {name: built["reports"][name]["checks"] for name in built["reports"]}
    assert r["gptq-8bit-32g-actorder_True"]["mean_kld"] < r["gptq-4bit-32g-actorder_True"]["mean_kld"]
    assert r["gguf-f16"]["mean_kld"] < r["gguf-q8_0"]["mean_kld"] < r["gguf-i1-q4_k_m"]["mean_kld"]
    assert r["gguf-q8_0"]["top1_agreement"] > r["gguf-i1-q4_k_m"]["top1_agreement"]
    for c in r.values():
        # A process with torch and the model loaded holds hundreds of MB and, for this 2-layer model, not GBs.
        assert c["p99_kld"] >= c["mean_kld"] and 3e8 < c["memory"]["peak_rss_bytes"] < 4e9


def test_gguf_rows_carry_max_ram_required(built):
    memory = built["reports"]["gguf-i1-q4_k_m"]["checks"]["memory"]
    size = built["reports"]["gguf-i1-q4_k_m"]["files"][0]["size"]
    # The card's claim must never be below what loading and scoring the file really took here.
    assert memory["max_ram_required_bytes"] > max(size, memory["peak_rss_bytes"])


def test_a_failed_gate_blocks(built, tmp_path):
    strict = {fmt: {**gate, "max_mean_kld": 1e-6} for fmt, gate in TINY_GATES.items()}
    config = write_config(tmp_path, built["base"], [{"format": "gguf", "quant_type": "Q4_K_M"}], gates=strict)
    proc = run_cli("build", "--config", str(config), "--out", str(built["out"]), "--all", "--no-check")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("check", "--config", str(config), "--out", str(built["out"]), "--all", "--force")
    assert (
        proc.returncode == 1 and "FAIL  max_mean_kld" in proc.stdout and "failed gates: gguf-i1-q4_k_m" in proc.stderr
    )
    report = json.loads((built["out"] / "gguf-i1-q4_k_m" / "report.json").read_text())
    assert report["status"] == "failed" and not report["checks"]["passed"]
    proc = run_cli("build", "--config", str(config), "--out", str(built["out"]), "--all", "--force")
    assert proc.returncode == 1 and "failed their checks" in proc.stderr


def test_a_broken_chat_template_is_caught(built, tmp_path):
    config = write_config(
        tmp_path,
        built["base"],
        [{"format": "gguf", "quant_type": "Q8_0"}],
        prompt_template="<|user|>{prompt}<|assistant|>",
    )
    proc = run_cli("build", "--config", str(config), "--out", str(tmp_path / "out"), "--all")
    assert proc.returncode == 1
    checks = json.loads((tmp_path / "out" / "gguf-q8_0" / "report.json").read_text())["checks"]
    assert "disagrees with the tokenizer's chat template" in checks["template_problem"]
    verdicts = {v["gate"]: v["passed"] for v in checks["verdicts"]}
    assert not checks["passed"] and verdicts == {
        "max_ppl_ratio": True,
        "max_mean_kld": True,
        "min_top1": True,
        "chat_template": False,
        "smoke": True,
    }


def test_reply_problems():
    template = "<|user|>\n{prompt}</s>\n<|assistant|>\n"
    assert reply_problems("  ", [], template) == ["empty reply"]
    assert "template leak" in reply_problems("Paris.<|user|> and", [1, 2, 3], template)[0]
    looping = [5, 6, 7, 8] * 8
    assert reply_problems("Paris Paris Paris", looping, template) == ["degenerate repetition"]
    assert reply_problems("The capital of France is Paris.", list(range(20)), template) == []
    phrase = list(range(100, 110))  # a 10-token phrase said three times, with other words around
    assert reply_problems("Hola...", [1, 2] + phrase + [3] + phrase + [4, 5] + phrase, template) == [
        "degenerate repetition"
    ]


def test_report_table_json_and_plot(built):
    proc = run_cli("report", "--config", str(built["config"]), "--out", str(built["out"]), check=True)
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["FORMAT", "VARIANT", "SIZE", "GB"]
    assert lines[1].startswith("base") and any(line.startswith("gguf") and "gguf-i1-q4_k_m" in line for line in lines)
    md = run_cli(
        "report", "--config", str(built["config"]), "--out", str(built["out"]), "--markdown", check=True
    ).stdout
    assert md.startswith("| FORMAT | VARIANT |") and md.count("\n") >= 6
    data = json.loads((built["out"] / "comparison.json").read_text())
    assert {r["variant"] for r in data["variants"]} >= {"gguf-q8_0", "gptq-4bit-32g"}
    png = (built["out"] / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert np.isfinite([r["kld"] for r in data["variants"] if r["kld"] is not None]).all()
