"""AutoRound variants on the tiny model: the real auto-round run, exported in the GPTQ v1 and AutoAWQ layouts,
published with the same configs as gptqmodel's files, reloaded in transformers, planned, and carded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli, write_config
from safetensors import safe_open
from test_awq_build import autoawq_quant_config
from test_gptq_build import AUTOGPTQ_KEYS

AUTOROUND = {"iters": 4, "batch_size": 4}
VARIANTS = [
    {"format": "gptq", "group_size": 32, "desc_act": False, "default": True},  # gptqmodel, for comparison
    {"format": "gptq", "group_size": 32, "autoround": AUTOROUND},
    {"format": "awq", "group_size": 32, "autoround": AUTOROUND, "default": True},
]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    work = tmp_path_factory.mktemp("autoround")
    config = write_config(work, tiny_model, VARIANTS)
    out = work / "out"
    proc = run_cli("build", "--config", str(config), "--out", str(out), "--all", cwd=work, check=True)
    return {"config": config, "out": out, "work": work, "base": tiny_model, "stderr": proc.stderr}


def test_names_keep_autoround_files_apart(built):
    names = sorted(p.name for p in built["out"].iterdir() if p.is_dir())
    assert names == ["awq-4bit-32g-autoround", "gptq-4bit-32g-actorder_False", "gptq-4bit-32g-autoround"]
    assert "auto-round: 4-bit g32 gptq, 4 iters x 4 windows per block" in built["stderr"]


def test_published_configs_are_the_layouts_readers_know(built):
    gptq = built["out"] / "gptq-4bit-32g-autoround"
    config = json.loads((gptq / "config.json").read_text())
    assert list(config["quantization_config"]) == AUTOGPTQ_KEYS
    assert config["quantization_config"]["desc_act"] is False and config["quantization_config"]["sym"] is True
    assert json.loads((gptq / "quantize_config.json").read_text()) == config["quantization_config"]
    awq = built["out"] / "awq-4bit-32g-autoround"
    assert json.loads((awq / "quant_config.json").read_text()) == autoawq_quant_config(32)
    for folder in (gptq, awq):
        assert not (folder / "quantization_config.json").exists()  # AutoRound's own copy is not published
        text = (folder / "config.json").read_text()
        assert "auto-round" not in text and "/tmp" not in text
        assert json.loads(text)["dtype"] == "float16"
        with safe_open(folder / "model.safetensors", "np") as f:
            floats = {f.get_slice(k).get_dtype() for k in f.keys() if not k.endswith(("qweight", "qzeros", "g_idx"))}
        assert floats == {"F16"}, floats
        report = json.loads((folder / "report.json").read_text())
        assert report["inputs"]["engine"]["auto-round"] == "0.16.1"
        assert report["checks"]["passed"] is True
        losses = report["module_losses"]  # AutoRound's per-block loss, before tuning and at its best step
        assert [row["block"] for row in losses] == [0, 1]
        assert all(0 < row["loss"] <= row["loss_start"] and 0 <= row["best_step"] <= 4 for row in losses), losses


def test_autoround_tuned_the_weights_gptqmodel_did_not(built):
    """Same bits, groups and layout as the gptqmodel file; the integers differ because AutoRound rounded them."""
    name = "model.layers.1.mlp.down_proj.qweight"

    def qweight(branch):
        with safe_open(built["out"] / branch / "model.safetensors", "np") as f:
            return f.get_tensor(name)

    tuned, solved = qweight("gptq-4bit-32g-autoround"), qweight("gptq-4bit-32g-actorder_False")
    assert tuned.shape == solved.shape and (tuned != solved).mean() > 0.1
    size = {
        b: (built["out"] / b / "model.safetensors").stat().st_size
        for b in ("gptq-4bit-32g-autoround", "gptq-4bit-32g-actorder_False")
    }
    assert len(set(size.values())) == 1, size


def test_gptq_zero_points_are_v1(built):
    """Symmetric 4-bit GPTQ v1 stores every zero point as 7 (8 - 1); readers add the 1 back. A v2 file (8) under
    `checkpoint_format: gptq` would load with every weight one step off."""
    with safe_open(built["out"] / "gptq-4bit-32g-autoround" / "model.safetensors", "np") as f:
        for name in [k for k in f.keys() if k.endswith(".qzeros")]:
            words = f.get_tensor(name).view(np.uint32)
            assert {int(v) for i in range(8) for v in np.unique((words >> (4 * i)) & 0xF)} == {7}, name


@pytest.mark.parametrize("branch", ["gptq-4bit-32g-autoround", "awq-4bit-32g-autoround"])
def test_reloads_in_transformers_close_to_base(built, branch):
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 1024, (1, 96), generator=torch.Generator().manual_seed(3))

    def logits(folder):
        model = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
        with torch.no_grad():
            return model(ids).logits.float()

    base, quant = logits(built["base"]), logits(built["out"] / branch)
    err = ((quant - base).norm() / base.norm()).item()
    assert err < 0.3, err


def test_gptqmodel_options_are_refused_with_autoround(tmp_path, tiny_model):
    config = write_config(tmp_path, tiny_model, [{"format": "gptq", "group_size": 32, "autoround": {}, "gptaq": True}])
    proc = run_cli("plan", "--config", str(config))
    assert proc.returncode == 2, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert str(config) in error and "gptaq" in error and "remove them or autoround" in error


def test_plan_and_card(built):
    """plan: the same file as gptqmodel's, and AutoRound's memory (the whole model held in bfloat16); the card
    names both engines and says which file each made."""
    proc = run_cli("plan", "--config", str(built["config"]), "--json", cwd=built["work"], check=True)
    rows = {row["variant"]: row for row in json.loads(proc.stdout)}
    tuned, solved = rows["gptq-4bit-32g-autoround"], rows["gptq-4bit-32g-noact"]
    assert tuned["predicted_bytes"] == solved["predicted_bytes"] and "vLLM" in tuned["clients"]
    model = json.loads((built["base"] / "config.json").read_text())
    params = sum(t.numel() for t in load_state(built["base"]).values())
    assert model["hidden_size"] == 256 and tuned["stages"]["quantize"]["ram"] > 2 * params

    run_cli("card", "--config", str(built["config"]), "--out", str(built["out"]), cwd=built["work"], check=True)
    card = (built["out"] / "cards" / "tester__tiny-mistral-GPTQ" / "README.md").read_text()
    assert "made with gptqmodel 7.7.0 and auto-round 0.16.1" in card
    assert "AutoRound (4 tuning steps per block, 4 windows each)" in card
    awq = (built["out"] / "cards" / "tester__tiny-mistral-AWQ" / "README.md").read_text()
    assert "made with auto-round 0.16.1 by" in awq


def load_state(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")
