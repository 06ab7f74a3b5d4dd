"""Clients tier (`pytest -m clients`): every layout the toolkit writes, loaded by vLLM's CPU build (and the MLX
files, fetched from the local hub by huggingface_hub, run by mlx-lm's own CLI).

For each file the compatibility table (formats/clients.py) says loads in vLLM, vLLM's
perplexity on the same token ids is within 1% of transformers' and its per-token
log-probabilities agree (mean |difference| < 0.01: a file whose g_idx vLLM ignores would
load and still fail this); for each file the table marks refused, vLLM really refuses it
with the message the table quotes. So the table cannot go stale. GGUF through llama.cpp is
tested in the default suite (tests/test_gguf.py).
"""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli, write_config

from quantize import formats
from quantize.project import load_config
from quantize.scoring import HFScorer

pytestmark = pytest.mark.clients

SET_A = [
    {"format": "gptq", "bits": 4, "group_size": 32, "default": True},  # act order, static layout
    {"format": "gptq", "bits": 4, "group_size": 128, "desc_act": False},
    {"format": "gptq", "bits": 4, "group_size": -1},
    {"format": "gptq", "bits": 8, "group_size": 128},
    {"format": "awq", "bits": 4, "group_size": 128, "default": True},
    # AutoRound's exports of the same layouts (a few tuning steps: the layout is under test, not the tuning)
    {"format": "gptq", "bits": 4, "group_size": 32, "autoround": {"iters": 4}},
    {"format": "awq", "bits": 4, "group_size": 32, "autoround": {"iters": 4}},
]
SET_B = [{"format": "gptq", "bits": 4, "group_size": 32, "static_groups": False}]  # AutoGPTQ's dynamic act order


@pytest.fixture(scope="module")
def vllm():
    from vllm_env import vllm_python

    return vllm_python()


@pytest.fixture(scope="module")
def w4a16(vllm):
    from vllm_env import has_w4a16_kernel

    return has_w4a16_kernel(vllm)


def served(row, spec, result, w4a16) -> bool:
    """Whether vLLM served the file as the table says, so its numbers can be compared.

    A row marked refused must be refused at load with the table's text. A 4-bit file on a CPU
    whose vLLM library lacks the 4-bit kernel (AVX2-only, see vllm_env.has_w4a16_kernel) must
    load, and fail its first forward on that kernel alone: vLLM read the config and the packed
    weights and chose its CPU 4-bit path. The comparison cannot run on such a machine and the
    test says so (skipped), rather than passing or blaming the file.
    """
    if row.loads is False:
        assert not result["loaded"] and row.refusal in result["error"], result["error"]
        return False
    assert row.loads is True, row
    assert result["loaded"], result["error"]
    if spec.bits == 4 and not w4a16:
        from vllm_env import NO_W4A16_KERNEL

        assert NO_W4A16_KERNEL in (result["error"] or ""), result["error"]
        pytest.skip("vLLM's CPU build has no 4-bit kernel on this CPU (AVX2 only); the file loaded up to the kernel")
    assert result["error"] is None, result["error"]
    return True


def vllm_run(python, tmp_path, folder, windows, prompts=(), max_new_tokens=16, max_model_len=256) -> dict:
    job = tmp_path / f"job-{folder.name}.json"
    job.write_text(
        json.dumps(
            {
                "folders": [str(folder)],
                "windows": [[int(t) for t in w] for w in windows],
                "prompts": [list(p) for p in prompts],
                "max_new_tokens": max_new_tokens,
                "max_model_len": max_model_len,
            }
        )
    )
    proc = subprocess.run(
        [str(python), str(ROOT / "tests" / "vllm_runner.py"), str(job)], capture_output=True, text=True, timeout=600
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    out = {}
    for name, variants in (("a", SET_A), ("b", SET_B)):
        work = tmp_path_factory.mktemp(f"clients-{name}")
        config = write_config(work, tiny_model, variants)
        run_cli(
            "build", "--config", str(config), "--out", str(work / "out"), "--all", "--no-check", cwd=work, check=True
        )
        for variant in load_config(config).variants:
            out[f"{name}:{variant.branch}"] = (variant, work / "out" / variant.branch)
    return out


@pytest.fixture(scope="module")
def windows(tiny_model, wiki_texts):
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_model)(" ".join(wiki_texts[-300:]))["input_ids"]
    return np.asarray(ids[: 4 * 128]).reshape(4, 128)


def hf_token_logprobs(folder, spec, windows) -> np.ndarray:
    """transformers' log-probability of each next token, float16 as vLLM computes."""
    fmt = formats.get(spec.format)
    config = json.loads((folder / "config.json").read_text())
    scorer = HFScorer(folder, "cpu", dtype=torch.float16, **fmt.load_kwargs(spec, config, "cpu"))
    rows = []
    for w in windows:
        logits = torch.from_numpy(scorer.logits(w)).double()
        lp = torch.log_softmax(logits, -1)[:-1]
        rows.append(lp[torch.arange(len(w) - 1), torch.from_numpy(w[1:])].numpy())
    return np.stack(rows)


@pytest.mark.parametrize(
    "key",
    [
        f"a:{b}"
        for b in (
            "gptq-4bit-32g-actorder_True",
            "gptq-4bit-128g-actorder_False",
            "gptq-4bit--1g-actorder_True",
            "gptq-8bit-128g-actorder_True",
            "awq-4bit-128g",
            "gptq-4bit-32g-autoround",
            "awq-4bit-32g-autoround",
        )
    ]
    + ["b:gptq-4bit-32g-actorder_True"],
)
def test_vllm_loads_what_the_table_says_and_matches_transformers(key, built, windows, vllm, w4a16, tmp_path):
    variant, folder = built[key]
    row = next(s for s in formats.of(variant).support(variant.spec) if s.client == "vLLM")
    result = vllm_run(vllm, tmp_path, folder, windows)
    if not served(row, variant.spec, result, w4a16):
        return
    got = np.asarray(result["token_logprobs"])
    ref = hf_token_logprobs(folder, variant.spec, windows)
    ppl_vllm, ppl_hf = math.exp(-got.mean()), math.exp(-ref.mean())
    assert abs(ppl_vllm / ppl_hf - 1) < 0.01, (ppl_vllm, ppl_hf)
    assert np.abs(got - ref).mean() < 0.01, np.abs(got - ref).mean()


def test_the_published_smollm2_default_is_served_by_vllm(vllm, w4a16, tmp_path):
    """The README's first command built and published SmolLM2's default GPTQ branch: vLLM serves those bytes,
    answers the smoke prompts, and its perplexity on the held-out windows is within 1% of the check's figure;
    where the compatibility table says vLLM's CPU build refuses that layout, it refuses it with the table's text."""
    project = load_config(ROOT / "examples" / "smollm2.yaml")
    default = next(v for v in project.variants if v.format == "gptq" and v.default)
    mirror = ROOT / "out" / "hub" / "models" / "local" / "SmolLM2-135M-Instruct-GPTQ"
    report_file = ROOT / "out" / default.branch / "report.json"
    if not mirror.is_dir() or not report_file.is_file():
        pytest.skip("run the README's first command (build and publish the SmolLM2 default) first")
    folder = tmp_path / "published"
    subprocess.run(["git", "clone", "--quiet", "--branch", default.branch, str(mirror), str(folder)], check=True)
    report = json.loads(report_file.read_text())
    row = next(s for s in formats.of(default).support(default.spec) if s.client == "vLLM")
    from transformers import AutoTokenizer

    from quantize.basemodel import resolve_base
    from quantize.checks.smoke import load_suite, prompt_ids
    from quantize.evalset import eval_set, find_eval

    base = resolve_base(project)  # the checks' own tokenizer and key: the very windows the report was scored on
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    es = eval_set(find_eval(project.root, project.config.evaluation), tokenizer, base.tokenizer_hash)
    assert es.stats.hash == report["checks"]["eval"]["hash"]
    suite = load_suite(find_eval(project.root, project.config.smoke))
    cfg = project.config
    asked = [prompt_ids(cfg.prompt_template, p, cfg.system_prompt, tokenizer) for p in suite.prompts]
    prompts = [ids for ids in asked if ids is not None]  # the checks' own ids, two-turn prompts included
    result = vllm_run(vllm, tmp_path, folder, es.windows, prompts, max_new_tokens=24, max_model_len=es.stats.n_ctx + 32)
    if not served(row, default.spec, result, w4a16):
        return
    lp = np.asarray(result["token_logprobs"])
    first = es.stats.n_ctx // 2  # the check scores the second half of each window, as llama-perplexity does
    ppl = math.exp(-lp[:, first:].mean())
    assert abs(ppl / report["checks"]["ppl"] - 1) < 0.01, (ppl, report["checks"]["ppl"])
    replies = [tokenizer.decode(r, skip_special_tokens=True).strip() for r in result["replies"]]
    assert all(len(r) > 5 for r in replies), replies


def test_mlx_lm_runs_the_branches_a_plain_hub_client_downloads(tiny_model, tmp_path):
    """MLX files published to the local hub, fetched by huggingface_hub by branch, then run by mlx-lm's own CLI
    in a fresh process (the command the card gives): the bytes are the report's and mlx-lm generates from them."""
    import sys
    from pathlib import Path

    from huggingface_hub import snapshot_download

    from quantize.hub.mirror import running

    gates = {"mlx": {"max_ppl_ratio": 2.0, "max_mean_kld": 1.0, "smoke": "report"}}
    variants = [{"format": "mlx", "bits": 4, "default": True}, {"format": "mlx", "recipe": "mixed_3_6"}]
    config = write_config(tmp_path, tiny_model, variants, gates=gates)
    out, mirror = tmp_path / "out", tmp_path / "hub"
    run_cli("build", "--config", str(config), "--out", str(out), "--all", cwd=tmp_path, check=True)
    run_cli("card", "--config", str(config), "--out", str(out), "--git", str(mirror), check=True)
    run_cli("publish", "--config", str(config), "--out", str(out), "--all", "--git", str(mirror), check=True)
    with running(mirror) as url:
        for branch in ("main", "mlx-mixed_3_6"):
            got = Path(
                snapshot_download(
                    "tester/tiny-mistral-MLX", revision=branch, endpoint=url, cache_dir=tmp_path / "dl" / branch
                )
            )
            built = out / ("mlx-4bit" if branch == "main" else branch)
            report = json.loads((built / "report.json").read_text())
            for f in report["files"]:
                assert (got / f["path"]).read_bytes() == (built / f["path"]).read_bytes(), f["path"]
            proc = subprocess.run(
                [sys.executable, "-m", "mlx_lm", "generate", "--model", str(got), "--prompt", "Paris is", "-m", "8"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert "Generation:" in proc.stdout and "tokens-per-sec" in proc.stdout, proc.stdout
