"""MLX end to end on the tiny model: mlx-lm's converter, the files mlx-community publishes, mlx-lm's loader."""

from __future__ import annotations

import json
import shutil
from importlib.metadata import version

import numpy as np
import pytest
import torch
from conftest import TINY_GATES, run_cli, write_config
from safetensors import safe_open

MATRIX = [
    {"format": "mlx", "matrix": {"bits": [4, 8]}, "include": [{"bits": 4, "default": True}]},
    {"format": "mlx", "recipe": "mixed_3_6"},
    {"format": "mlx", "mode": "mxfp4"},
    {"format": "mlx", "mode": "nvfp4"},
    {"format": "mlx", "bits": 3, "group_size": 32},
]
NAMES = ["mlx-4bit", "mlx-8bit", "mlx-mixed_3_6", "mlx-mxfp4", "mlx-nvfp4", "mlx-3bit-32g"]
# A random 2-layer model's top-1 is near chance at 3 bits: judge KLD and ppl only.
GATES = {**TINY_GATES, "mlx": {"max_ppl_ratio": 2.0, "max_mean_kld": 1.0, "smoke": "report"}}
ROPE_THETA = 500000.0  # not mlx-lm's fallback (10000): a model that loses it computes other logits


@pytest.fixture(scope="module")
def rope_model(tmp_path_factory, tiny_model):
    """The tiny model with a non-default rope_theta, as transformers 5 writes it (only in rope_parameters)."""
    folder = tmp_path_factory.mktemp("tiny-rope")
    for item in tiny_model.iterdir():
        shutil.copy2(item, folder / item.name)
    config = json.loads((folder / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": ROPE_THETA}
    assert "rope_theta" not in config
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory, rope_model):
    work = tmp_path_factory.mktemp("mlx")
    config = write_config(work, rope_model, MATRIX, gates=GATES)
    out = work / "out"
    run_cli("build", "--config", str(config), "--out", str(out), "--all", cwd=work, check=True)
    reports = {n: json.loads((out / n / "report.json").read_text()) for n in NAMES}
    return {"out": out, "base": rope_model, "config": config, "work": work, "reports": reports}


def hf_logprobs(base, ids: np.ndarray) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        return torch.log_softmax(model(torch.from_numpy(ids)[None]).logits[0].float(), -1).numpy()


def mlx_logprobs(folder, ids: np.ndarray) -> tuple[np.ndarray, float]:
    """mlx-lm's own loader, float32 compute; also returns the rope_theta the model object was built with."""
    import mlx.core as mx
    from mlx_lm import load

    model, _ = load(str(folder))
    model.set_dtype(mx.float32)
    logits = np.array(model(mx.array(ids[None].astype(np.int32)))[0].astype(mx.float32))
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True)), model.args.rope_theta


def mean_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float((np.exp(p) * (p - q)).sum(-1).mean())


def test_files_are_what_mlx_community_publishes(built):
    for name in NAMES:
        folder = built["out"] / name
        files = sorted(p.name for p in folder.iterdir())
        assert "model.safetensors" in files and "model.safetensors.index.json" in files, files
        assert "README.md" not in files  # mlx-lm's stub: the repo's card comes from `card`
        config = json.loads((folder / "config.json").read_text())
        assert config["rope_theta"] == ROPE_THETA, name
        assert config["quantization"] == config["quantization_config"]
        tok = json.loads((folder / "tokenizer_config.json").read_text())
        assert not {"is_local", "local_files_only"} & set(tok), name
        assert (folder / "tokenizer.json").read_bytes() == (built["base"] / "tokenizer.json").read_bytes()
        with safe_open(folder / "model.safetensors", "np") as f:
            assert f.metadata() == {"format": "mlx"}
        for text in (folder / "config.json", folder / "tokenizer_config.json"):
            assert "/tmp" not in text.read_text()
    q = {n: json.loads((built["out"] / n / "config.json").read_text())["quantization"] for n in NAMES}
    assert q["mlx-4bit"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    assert q["mlx-mxfp4"] == {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    assert q["mlx-nvfp4"] == {"group_size": 16, "bits": 4, "mode": "nvfp4"}
    assert q["mlx-3bit-32g"] == {"group_size": 32, "bits": 3, "mode": "affine"}
    # the mixed recipe names each module's bits: 6 for lm_head, 3 for the attention projections
    assert (
        q["mlx-mixed_3_6"]["lm_head"]["bits"] == 6
        and q["mlx-mixed_3_6"]["model.layers.0.self_attn.q_proj"]["bits"] == 3
    )
    report = built["reports"]["mlx-4bit"]
    assert report["variant"]["repo"] == "tester/tiny-mistral-MLX" and report["variant"]["default"]
    assert report["variant"]["branch"] == "mlx-4bit" and report["status"] == "passed"


def test_plan_predicts_every_file_within_one_percent(built):
    for name, report in built["reports"].items():
        weights = sum(f["size"] for f in report["files"] if f["path"].endswith(".safetensors"))
        assert report["predicted_bytes"] == pytest.approx(weights, rel=0.01), name
    plan = json.loads(run_cli("plan", "--config", str(built["config"]), "--json", check=True).stdout)
    rows = {r["variant"]: r for r in plan}
    assert set(rows) == set(NAMES) and rows["mlx-4bit"]["clients"] == ["mlx-lm"]
    assert rows["mlx-8bit"]["predicted_bytes"] == built["reports"]["mlx-8bit"]["predicted_bytes"]


def test_rope_theta_reaches_mlx_lm_and_changes_the_logits(built, tmp_path):
    """The published config carries rope_theta where mlx-lm reads it; without it (the trap) the logits drift."""
    ids = np.random.RandomState(0).randint(3, 1024, size=256)
    ref = hf_logprobs(built["base"], ids)
    good, theta = mlx_logprobs(built["out"] / "mlx-8bit", ids)
    assert theta == ROPE_THETA
    broken = tmp_path / "no-rope"
    shutil.copytree(built["out"] / "mlx-8bit", broken)
    config = json.loads((broken / "config.json").read_text())
    del config["rope_theta"]
    (broken / "config.json").write_text(json.dumps(config))
    bad, bad_theta = mlx_logprobs(broken, ids)
    assert bad_theta == 10000  # mlx-lm's silent fallback: what the build prevents
    kl_good, kl_bad = mean_kl(ref, good), mean_kl(ref, bad)
    assert kl_good < 1e-4 and kl_bad > 3 * kl_good, (kl_good, kl_bad)


def test_checks_score_the_same_tokens_and_rank_by_bits(built):
    checks = {n: r["checks"] for n, r in built["reports"].items()}
    assert len({c["eval"]["hash"] for c in checks.values()}) == 1
    assert len({round(c["base_ppl"], 6) for c in checks.values()}) == 1
    assert checks["mlx-8bit"]["mean_kld"] < checks["mlx-4bit"]["mean_kld"] < checks["mlx-3bit-32g"]["mean_kld"]
    assert checks["mlx-8bit"]["mean_kld"] < 1e-3 and checks["mlx-8bit"]["top1_agreement"] > 0.9
    for c in checks.values():
        assert c["replies"] and c["memory"]["peak_rss_bytes"] > 1e8
        assert c["smoke"]["prompts"] == 3 and all(r["base_reply"] is not None for r in c["replies"])
    # the chat eval through mlx-lm: the same assistant tokens, ranked by bits like the plain text
    assert len({c["chat"]["eval"]["hash"] for c in checks.values()}) == 1
    assert checks["mlx-8bit"]["chat"]["mean_kld"] < checks["mlx-3bit-32g"]["chat"]["mean_kld"]


def test_a_corrupted_scale_fails_the_logits_bound(built, tmp_path):
    """Negative control: the same 8-bit file with one layer's scales scaled by 4 must fail a bound it passes."""
    from safetensors.torch import load_file

    strict = {**GATES, "mlx": {**GATES["mlx"], "max_mean_kld": 1e-3}}
    config = write_config(tmp_path, built["base"], [{"format": "mlx", "bits": 8}], gates=strict)
    out = tmp_path / "out"
    run_cli("build", "--config", str(config), "--out", str(out), "--all", cwd=tmp_path, check=True)
    file = out / "mlx-8bit" / "model.safetensors"
    key = "model.layers.0.mlp.down_proj.scales"
    scales = load_file(file)[key].clone()  # not a view of the file, which is rewritten below
    assert scales.dtype == torch.bfloat16  # the base's dtype, as mlx-lm was told
    # Rewritten in place, the file's size unchanged: a size the report does not list is named as damage before
    # any check runs, and this control is about the bound.
    header = int.from_bytes(file.read_bytes()[:8], "little")
    start, end = json.loads(file.read_bytes()[8 : 8 + header])[key]["data_offsets"]
    with file.open("r+b") as f:
        f.seek(8 + header + start)
        f.write((scales * 4).contiguous().view(torch.uint8).numpy().tobytes())
        assert f.tell() == 8 + header + end
    assert (load_file(file)[key] == scales * 4).all()
    proc = run_cli("check", "--config", str(config), "--out", str(out), "--all", "--force", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL  max_mean_kld" in proc.stdout


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"mode": "mxfp4", "bits": 8}, "mode mxfp4 is 4-bit, not 8"),
        ({"mode": "nvfp4", "group_size": 64}, "mode nvfp4 has group size 16, not 64"),
        ({"recipe": "mixed_3_6", "bits": 4}, "recipe mixed_3_6 sets the bits itself"),
        ({"recipe": "mixed_3_6", "mode": "mxfp8"}, "recipe mixed_3_6 is affine only"),
        ({"bits": 4, "group_size": 16}, "affine group size 16 is not one of"),
        ({"bits": 7}, "bits"),
    ],
)
def test_wrong_combinations_fail_at_config_time(tmp_path, tiny_model, spec, message):
    config = write_config(tmp_path, tiny_model, [{"format": "mlx", **spec}])
    proc = run_cli("plan", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "variants.yaml" in proc.stderr


def test_a_group_size_that_does_not_divide_a_width_is_refused(tmp_path, tiny_model):
    """mlx-lm would silently leave such layers unquantized; the config refuses them instead."""
    config = json.loads((tiny_model / "config.json").read_text())
    odd = tmp_path / "odd"
    shutil.copytree(tiny_model, odd)
    config["intermediate_size"] = 576  # SmolLM2-like width: 64 divides it, 128 does not
    (odd / "config.json").write_text(json.dumps(config))
    project = write_config(tmp_path, odd, [{"format": "mlx", "bits": 4, "group_size": 128}])
    proc = run_cli("build", "--config", str(project), "--all", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and "does not divide the input width 576 of mlp.down_proj" in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "mlx-4bit-128g").exists()


def test_card_has_an_mlx_section_and_publish_pushes_the_branches(built):
    out, config = built["out"], built["config"]
    run_cli("card", "--config", str(config), "--out", str(out), cwd=built["work"], check=True)
    card = (out / "cards" / "tester__tiny-mistral-MLX" / "README.md").read_text()
    assert "## Provided files, and MLX parameters" in card
    assert "\nlibrary_name: mlx\n" in card and "\nbase_model_relation: quantized\n" in card  # as mlx-lm writes
    assert "mlx_lm.generate --model tester/tiny-mistral-MLX" in card
    assert "[main](https://huggingface.co/tester/tiny-mistral-MLX/tree/main) (= mlx-4bit)" in card
    assert "| mlx-lm | yes |" in card and "mixed_3_6" in card
    # the engine versions come from the format's own declaration (they were once blank: "mlx-lm  (mlx )")
    assert f"made with mlx-lm {version('mlx-lm')} (mlx {version('mlx')}) by quantize" in card
    mirror = built["work"] / "hub"
    run_cli("card", "--config", str(config), "--out", str(out), "--git", str(mirror), cwd=built["work"], check=True)
    run_cli("publish", "--config", str(config), "--out", str(out), "--all", "--git", str(mirror), check=True)
    import subprocess

    repo = mirror / "models" / "tester" / "tiny-mistral-MLX"
    branches = subprocess.run(
        ["git", "--git-dir", str(repo), "branch", "--format=%(refname:short)"], capture_output=True, text=True
    ).stdout.split()
    assert set(branches) == {"main", *NAMES}
    files = subprocess.run(
        ["git", "--git-dir", str(repo), "ls-tree", "--name-only", "main"], capture_output=True, text=True
    ).stdout.split()
    assert "model.safetensors" in files and "README.md" in files and "report.json" not in files
