"""The base model streamed layer by layer gives what the whole float32 model gives: imatrix and logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantize.formats.gguf.imatrix import compute_imatrix
from quantize.scoring import hf_logits_fn, reference
from quantize.streaming import LayerStream


@pytest.fixture(scope="module")
def windows(tiny_model, wiki_texts):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_model)(" ".join(wiki_texts[:200]))["input_ids"]
    return np.asarray(ids[: 4 * 128], dtype=np.int64).reshape(4, 128)


def whole_model_imatrix(folder, ids) -> dict[str, np.ndarray]:
    """The reference: the whole model in float32 with hooks on every Linear (the pre-streaming method)."""
    import gguf
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    sums, counts, hooks = {}, {}, []
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not (tied and module_name == "lm_head"):
            name = names.get_name(f"{module_name}.weight", try_suffixes=(".weight",))

            def hook(_m, args, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                sums[name] = sums.get(name, 0) + (x * x).sum(0)
                counts[name] = counts.get(name, 0) + x.shape[0]

            hooks.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        for row in ids:
            model(torch.from_numpy(row).unsqueeze(0))
    return {name: (sums[name] / counts[name]).float().numpy() for name in sums}


def test_streamed_imatrix_equals_the_whole_model_one(tiny_model, windows):
    streamed, whole = compute_imatrix(tiny_model, windows).means(), whole_model_imatrix(tiny_model, windows)
    assert sorted(streamed) == sorted(whole) and "output.weight" in streamed and len(streamed) == 2 * 7 + 1
    for name in whole:
        rel = np.abs(streamed[name] - whole[name]).max() / np.abs(whole[name]).max()
        assert rel < 1e-3, (name, rel)


def test_chunked_imatrix_equals_the_one_pass_one(tiny_model, windows, monkeypatch):
    """Calibration sets over `CHUNK_TOKENS` go through the layers in chunks: the same matrix, summed in parts."""
    import quantize.streaming as streaming

    one_pass = compute_imatrix(tiny_model, windows).means()
    monkeypatch.setattr(streaming, "CHUNK_TOKENS", 2 * 128 - 1)  # one row per chunk
    assert streaming.chunk_rows(4, 128) == 1
    chunked = compute_imatrix(tiny_model, windows).means()
    assert sorted(chunked) == sorted(one_pass)
    for name in one_pass:
        assert np.allclose(chunked[name], one_pass[name], rtol=1e-6, atol=0), name
    monkeypatch.setattr(streaming, "CHUNK_TOKENS", 2 * 128)
    assert streaming.chunk_rows(4, 128) == 2 and streaming.chunk_rows(4, 100_000) == 1


def test_streamed_base_reference_equals_the_whole_model_one(tiny_model, windows):
    streamed = reference(windows, LayerStream(tiny_model).logits_fn(windows))
    whole = reference(windows, hf_logits_fn(tiny_model, dtype=torch.float32))
    assert streamed.scores().ppl == pytest.approx(whole.scores().ppl, rel=1e-3)
    assert np.abs(streamed.target_lp - whole.target_lp).max() < 1e-3
    assert (streamed.top_ids[:, 0] == whole.top_ids[:, 0]).mean() > 0.99


def test_a_missing_layer_tensor_is_an_error_not_a_silent_default(tiny_model, tmp_path, windows):
    """Negative control: a checkpoint without one layer's q_proj must not stream (meta tensors would be garbage)."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    tensors = load_file(broken / "model.safetensors")
    del tensors["model.layers.1.self_attn.q_proj.weight"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(KeyError, match="model.layers.1"):
        LayerStream(broken).final_hidden(windows[:1])
