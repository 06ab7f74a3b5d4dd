"""GGUF: conversion parity with the HF model, tokenizer parity, every quant type, the imatrix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import llama_tokens, published_means, run_cli, write_config

from quantize.formats.gguf import imatrix_by_default
from quantize.formats.gguf.convert import ModelMeta, convert
from quantize.formats.gguf.llamacpp import gguf_greedy, gguf_logits, load_gguf

TYPES = [
    "Q2_K",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q4_0",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_0",
    "Q5_K_S",
    "Q5_K_M",
    "Q6_K",
    "Q8_0",
    "F16",
]
# As built by default: k-quants and IQ types with the importance matrix (`i1-`), the others static.
BUILT = [f"i1-{t}" if imatrix_by_default(t) else t for t in TYPES] + ["i1-IQ4_XS", "i1-IQ2_XS", "i1-Q4_1", "Q4_K_M"]
TRICKY = [
    "Hello world",
    "  leading spaces and   runs of    spaces",
    "tabs\tand\nnew\n\nlines",
    "digits 1234567890 and 3.14159, 2024-11-26",
    "emoji 🙂🚀 and 👩‍👩‍👧",
    "non-Latin: Здравствуй мир, 日本語のテキスト, مرحبا",
    "mixed   123   456\n  789",
    "punctuation!!! ?? ... ---",
]


def hf_logits(folder, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy(), model


@pytest.fixture(scope="module", params=["bpe", "spm"])
def f16(request, tmp_path_factory, tiny_model, tiny_spm_model):
    folder = tiny_model if request.param == "bpe" else tiny_spm_model
    out = tmp_path_factory.mktemp(f"f16-{request.param}") / "tiny.F16.gguf"
    convert(folder, out, "F16", ModelMeta(name="tiny", base_model="org/tiny"))
    return folder, out


def test_f16_logits_and_greedy_match_hf(f16):
    folder, path = f16
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("The history of the city begins in the Middle Ages, when", add_special_tokens=False)["input_ids"]
    ref, model = hf_logits(folder, ids)
    llm = load_gguf(path, n_ctx=128)
    got = gguf_logits(llm, ids)
    assert got.shape == ref.shape
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 0.01, err
    assert (got.argmax(-1) == ref.argmax(-1)).mean() == 1.0
    hf_next = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids) :].tolist()
    assert gguf_greedy(llm, ids, 8) == hf_next


def test_tokenizer_parity(f16):
    """Same ids as the tokenizer the vocabulary came from: tokenizer.json for BPE, tokenizer.model for SPM.

    (For SentencePiece, transformers 5's converted tokenizer differs from sentencepiece itself
    on leading whitespace runs; llama.cpp follows sentencepiece, as the original models do.)
    """
    folder, path = f16
    if (folder / "tokenizer.model").exists():
        import sentencepiece

        encode = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).encode
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    llm = load_gguf(path, n_ctx=64)
    for text in TRICKY:
        assert llama_tokens(llm, text) == encode(text), text


def test_metadata(f16):
    from gguf import GGUFReader

    folder, path = f16
    reader = GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    config = json.loads((folder / "config.json").read_text())
    assert fields["general.architecture"] == "llama" and fields["general.name"] == "tiny"
    assert fields["llama.block_count"] == config["num_hidden_layers"]
    assert fields["llama.attention.head_count_kv"] == 2 and fields["llama.context_length"] == 2048
    assert fields["tokenizer.ggml.model"] == ("llama" if (folder / "tokenizer.model").exists() else "gpt2")
    assert fields["tokenizer.chat_template"].startswith("{% for m in messages %}")
    assert fields["tokenizer.ggml.eos_token_id"] == 2
    assert fields["general.base_model.0.repo_url"] == "https://huggingface.co/org/tiny"
    assert len(reader.tensors) == 2 + 2 * 9 + 1  # embeddings, output, norm; 9 per layer


def test_rejects_unknown_architecture(tmp_path, tiny_model):
    import shutil

    from quantize.errors import EngineError

    folder = tmp_path / "gpt2ish"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineError, match="architecture GPT2LMHeadModel is not supported"):
        convert(folder, tmp_path / "x.gguf", "F16", ModelMeta(name="x"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    """Every listed type of the tiny model through the CLI as configured by default (k-quants with the
    importance matrix), IQ4_XS (default imatrix), IQ2_XS and Q4_1 with a named one, and a static Q4_K_M."""
    work = tmp_path_factory.mktemp("gguf")
    variants = [
        {"format": "gguf", "matrix": {"quant_type": TYPES}},
        {"format": "gguf", "quant_type": "IQ4_XS"},
        {"format": "gguf", "quant_type": "IQ2_XS", "imatrix": "tiny"},
        {"format": "gguf", "quant_type": "Q4_1", "imatrix": "tiny"},
        {"format": "gguf", "quant_type": "Q4_K_M", "imatrix": False},
    ]
    config = write_config(work, tiny_model, variants)
    out = work / "out"
    # Checks are test_checks.py's subject; 2-bit types of a random 2-layer model fail any gate.
    with pytest.MonkeyPatch.context() as patch:  # a cache of its own: what is computed here is counted exactly
        patch.setenv("QUANTIZE_CACHE", str(work / "cache"))
        proc = run_cli("build", "--config", str(config), "--out", str(out), "--all", "--no-check", cwd=work, check=True)
    return {
        "out": out,
        "config": config,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "base": tiny_model,
        "cache": work / "cache",
    }


@pytest.mark.parametrize("quant_type", BUILT)
def test_every_type_quantizes_and_loads(built, quant_type):
    from gguf import GGUFReader

    folder = built["out"] / f"gguf-{quant_type.lower()}"
    path = folder / f"tiny-mistral.{quant_type}.gguf"
    quant_type = quant_type.removeprefix("i1-")
    assert path.is_file(), sorted(p.name for p in folder.iterdir())
    report = json.loads((folder / "report.json").read_text())
    assert report["variant"]["format"] == "gguf" and report["dtype"] == quant_type
    assert report["files"][0]["size"] == path.stat().st_size
    assert 1.5 < report["bits_per_weight"] < 17
    file_type = {f.name: f.contents() for f in GGUFReader(path).fields.values() if f.name == "general.file_type"}
    assert file_type["general.file_type"] == __import__("quantize.formats.gguf.quantize", fromlist=["x"]).file_type(
        quant_type
    )
    llm = load_gguf(path, n_ctx=64)
    logits = gguf_logits(llm, [5, 6, 7, 8])
    assert np.isfinite(logits).all()


def test_bits_per_weight_orders_the_types(built):
    bpw = {
        t.removeprefix("i1-"): json.loads((built["out"] / f"gguf-{t.lower()}" / "report.json").read_text())[
            "bits_per_weight"
        ]
        for t in ("i1-Q2_K", "i1-Q4_K_M", "i1-Q6_K", "Q8_0", "F16")
    }
    assert bpw["Q2_K"] < bpw["Q4_K_M"] < bpw["Q6_K"] < bpw["Q8_0"] < bpw["F16"]
    assert 15.5 < bpw["F16"] < 16.5


def test_f16_intermediate_is_shared_and_imatrix_recorded(built):
    # 17 GGUF variants from one cold cache: one F16 conversion, one importance matrix, reused by the rest.
    assert built["stderr"].count("converting tiny-mistral to F16 GGUF") == 1
    assert len(list((built["cache"] / "gguf").glob("*/tiny-mistral.F16.gguf"))) == 1
    assert built["stderr"].count("imatrix: computing") == 1 and "imatrix: cache hit" in built["stderr"]
    report = json.loads((built["out"] / "gguf-i1-iq2_xs" / "report.json").read_text())
    assert report["inputs"]["params"]["imatrix"] == "tiny"
    assert report["inputs"]["calibration"]["recipe"] == "tiny" and report["stages"]["imatrix"]["seconds"] > 0
    plain = json.loads((built["out"] / "gguf-q4_k_m" / "report.json").read_text())
    assert plain["inputs"]["calibration"] is None and "imatrix" not in plain["stages"]
    default = json.loads((built["out"] / "gguf-i1-q4_k_m" / "report.json").read_text())
    assert default["inputs"]["params"]["imatrix"] == "tiny" and "imatrix" in default["stages"]
    assert not (built["out"] / "gguf-i1-q8_0").exists()  # Q8_0 ignores an importance matrix: static by default


def test_static_and_i1_files_differ_and_keep_their_names(built):
    """The default (i1) and `imatrix: false` files of one type sit side by side, named apart, with other bytes."""
    i1 = built["out"] / "gguf-i1-q4_k_m" / "tiny-mistral.i1-Q4_K_M.gguf"
    static = built["out"] / "gguf-q4_k_m" / "tiny-mistral.Q4_K_M.gguf"
    assert i1.is_file() and static.is_file() and i1.read_bytes() != static.read_bytes()


def test_i1_files_carry_llama_cpps_imatrix_provenance_keys(built):
    """The four keys llama-quantize writes, read back with gguf-py's reader: the matrix's file (published beside
    the i1 file), the calibration recipe and its source, the matrix's entries, its chunks; a static file has
    none of them, and no matrix beside it."""
    import gguf

    def fields(path):
        reader = gguf.GGUFReader(path)
        return {k: f.contents() for k, f in reader.fields.items() if k.startswith("quantize.")}

    folder = built["out"] / "gguf-i1-q4_k_m"
    report = json.loads((folder / "report.json").read_text())
    got = fields(folder / "tiny-mistral.i1-Q4_K_M.gguf")
    assert got["quantize.imatrix.file"] == "tiny-mistral.imatrix.gguf"
    assert "tiny-mistral.imatrix.gguf" in {f["path"] for f in report["files"]}  # published with the variant
    matrix = gguf.GGUFReader(folder / got["quantize.imatrix.file"])
    sums = [t for t in matrix.tensors if t.name.endswith(".in_sum2")]
    assert got["quantize.imatrix.entries_count"] == len(sums) == 2 * 7 + 1
    cal = report["inputs"]["calibration"]
    said = f"{cal['recipe']}: {cal['source']}"
    assert got["quantize.imatrix.dataset"] == (said if len(said) <= 127 else said[:124] + "...")  # char[128]
    assert matrix.get_field("imatrix.datasets").contents() == [said]  # the file itself: no char[128]
    assert got["quantize.imatrix.chunks_count"] == cal["samples"] == 8
    assert matrix.get_field("imatrix.chunk_count").contents() == 8
    assert matrix.get_field("imatrix.chunk_size").contents() == cal["seq_len"]
    assert set(got) == {f"quantize.imatrix.{k}" for k in ("file", "dataset", "entries_count", "chunks_count")}
    assert fields(built["out"] / "gguf-q4_k_m" / "tiny-mistral.Q4_K_M.gguf") == {}
    assert sorted(p.name for p in (built["out"] / "gguf-q4_k_m").glob("*.gguf")) == ["tiny-mistral.Q4_K_M.gguf"]


def tensor_bytes(path) -> dict[str, tuple[str, bytes]]:
    import gguf

    return {t.name: (t.tensor_type.name, bytes(t.data.tobytes())) for t in gguf.GGUFReader(path).tensors}


def test_the_published_imatrix_remakes_the_i1_file_in_llama_cpp(built, tmp_path):
    """The matrix as published, read back as llama-quantize reads it (in_sum2 / counts, in float32) by gguf-py
    alone, and handed to llama.cpp with the cached F16: every tensor comes out byte for byte as published.
    Negative control: the same matrix with its columns reversed changes the quantized bytes (a uniform scale
    would not: llama.cpp's weighted rounding is invariant to it)."""

    from quantize.formats.gguf.quantize import quantize_file

    folder = built["out"] / "gguf-i1-q4_k_m"
    means = published_means(folder / "tiny-mistral.imatrix.gguf")
    (f16,) = (built["cache"] / "gguf").glob("*/tiny-mistral.F16.gguf")
    remade = tmp_path / "remade.gguf"
    quantize_file(f16, remade, "Q4_K_M", means)
    published = tensor_bytes(folder / "tiny-mistral.i1-Q4_K_M.gguf")
    assert tensor_bytes(remade) == published
    quantize_file(f16, tmp_path / "other.gguf", "Q4_K_M", {n: v[::-1].copy() for n, v in means.items()})
    assert tensor_bytes(tmp_path / "other.gguf") != published


def test_bad_type_lists_valid_ones(tmp_path, tiny_model):
    config = write_config(tmp_path, tiny_model, [{"format": "gguf", "quant_type": "Q4_K_XL"}])
    proc = run_cli("list", "--config", str(config))
    assert proc.returncode == 2 and "unknown GGUF type 'Q4_K_XL'" in proc.stderr and "Q4_K_M" in proc.stderr


@pytest.mark.parametrize("quant_type", ["IQ4_XS", "IQ3_M", "IQ3_XXS", "IQ2_M", "Q2_K_S"])
def test_type_that_needs_an_imatrix_is_refused_without_one(tmp_path, tiny_model, quant_type):
    config = write_config(tmp_path, tiny_model, [{"format": "gguf", "quant_type": quant_type, "imatrix": False}])
    proc = run_cli("list", "--config", str(config))
    assert proc.returncode == 2, proc.stdout
    line = proc.stderr.strip().splitlines()[-1]
    assert f"{quant_type} cannot be made without an importance matrix" in line and "variants[0]" in line
    assert "fix: remove `imatrix: false`" in line


def test_imatrix_defaults_follow_the_type(tmp_path, tiny_model):
    """k-quants and IQ types take the project's recipe; legacy and 8/16-bit types stay static; `true` names it."""
    from quantize.project import load_config

    variants = [
        {"format": "gguf", "matrix": {"quant_type": ["Q3_K_S", "Q6_K", "IQ3_M", "Q5_0", "Q8_0", "F16"]}},
        {"format": "gguf", "quant_type": "Q4_0", "imatrix": True},
    ]
    project = load_config(write_config(tmp_path, tiny_model, variants))
    got = {v.spec.label: v.spec.imatrix for v in project.variants}
    assert got == {
        "Q3_K_S": "tiny",
        "Q6_K": "tiny",
        "IQ3_M": "tiny",
        "Q5_0": None,
        "Q8_0": None,
        "F16": None,
        "Q4_0": "tiny",
    }
    assert [v.name for v in project.variants][:3] == ["gguf-i1-q3_k_s", "gguf-i1-q6_k", "gguf-i1-iq3_m"]
