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


def test_smoke_is_judged_against_the_base_model(built):
    """Every variant's replies sit beside the base's own greedy replies to the same ids, with agreement counted."""
    base_replies = None
    for name, report in built["reports"].items():
        c = report["checks"]
        sm = c["smoke"]
        assert sm["suite"] == "tiny-smoke" and sm["prompts"] == 3 and len(c["replies"]) == 3, name
        assert [r["kind"] for r in c["replies"]] == ["facts", "persona", "two-turn"]
        for r in c["replies"]:
            assert r["base_reply"] is not None and r["skipped"] is None and 0 < len(r["ids"]) <= 8
            assert 0 <= r["agree_tokens"] <= len(r["ids"]) and 0.0 <= r["same_share"] <= 1.0
            assert set(r["new_problems"]) <= set(r["problems"])
        mine = [r["base_reply"] for r in c["replies"]]
        assert base_replies in (None, mine), name  # one base, computed once, the same for every variant
        base_replies = mine
        assert sm["passed"] == sum(not r["problems"] for r in c["replies"])
        assert sm["regressions"] == sum(bool(r["new_problems"]) for r in c["replies"])


def test_chat_kld_on_assistant_turns(built):
    """The chat eval scores the base's replies as assistant turns; F16 matches the base there too, 4-bit does not."""
    r = {name: built["reports"][name]["checks"]["chat"] for name in built["reports"]}
    stats = r["gguf-f16"]["eval"]
    assert stats["eval"] == "chat" and stats["suite"] == "tiny-smoke" and stats["conversations"] == 3
    assert 3 <= stats["scored_tokens"] <= 3 * 96
    assert all(c["eval"] == stats for c in r.values())  # the same conversations for every format
    assert r["gguf-f16"]["mean_kld"] < 1e-3 and r["gguf-f16"]["ppl"] == pytest.approx(r["gguf-f16"]["base_ppl"], 0.01)
    assert r["gguf-f16"]["mean_kld"] < r["gguf-q8_0"]["mean_kld"] < r["gguf-i1-q4_k_m"]["mean_kld"]
    assert r["gptq-8bit-32g-actorder_True"]["mean_kld"] < r["gptq-4bit-32g-actorder_True"]["mean_kld"]


def test_chat_positions_score_only_the_marked_tokens(built):
    """Reference and score on marked positions agree with a direct computation; padding after the last scored
    token changes nothing; a different model on the same positions has a KLD above zero (negative control)."""
    from quantize.checks.chat import chat_set

    fn = hf_logits_fn(built["base"], dtype=torch.float32)
    asked = [[1, 40, 41, 42], None, [1, 50, 51]]
    answers = [[60, 61, 62, 2], [70], [80, 81, 82, 83, 84, 85]]
    found = chat_set("chat", "s", asked, answers, 5, pad=2)
    assert found is not None and found.stats.conversations == 2 and found.stats.scored_tokens == 4 + 5
    assert found.windows.shape == (2, 8) and found.windows[0, -1] == 2  # right-padded
    ref = reference(found.windows, fn, positions=found.positions)
    logits = fn(found.windows[1])
    lp = (
        logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1)[:, None]
    )
    assert ref.target_lp[4:] == pytest.approx([lp[t - 1, found.windows[1, t]] for t in range(3, 8)], abs=1e-4)
    same = score(found.windows, fn, ref, positions=found.positions)
    assert same.mean_kld < 1e-9 and same.tokens == 9
    other = hf_logits_fn(built["out"] / "gptq-4bit-32g-actorder_True", dtype=torch.float32)
    assert score(found.windows, other, ref, positions=found.positions).mean_kld > 1e-5  # same model: < 1e-9


def test_base_replies_are_cached(built):
    proc = run_cli("check", "--config", str(built["config"]), "--out", str(built["out"]), "--variant", "gguf-q8_0")
    assert proc.returncode == 0 and "already checked" in proc.stderr
    proc = run_cli(
        "check", "--config", str(built["config"]), "--out", str(built["out"]), "--variant", "gguf-q8_0", "--force"
    )
    assert (
        proc.returncode == 0
        and "base replies: cache hit" in proc.stderr
        and "base chat log-probs: cache hit" in proc.stderr
    )
    again = json.loads((built["out"] / "gguf-q8_0" / "report.json").read_text())["checks"]
    assert again["replies"] == built["reports"]["gguf-q8_0"]["checks"]["replies"]
