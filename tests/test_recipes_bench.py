"""bench/recipes.py on the tiny model: each recipe's option reaches the engine, and the table has both texts.

The SmolLM2 study itself is a bench (minutes per recipe, bench/README.md section 8); this runs the same code on
the tiny Mistral so a recipe that silently builds the plain file (an option lost on the way to gptqmodel) fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ["plain", "mse-2.4", "gptaq", "chat-mix", "autoround"]


@pytest.mark.slow  # five builds, each scored on two texts: 4 minutes on 2 cores, the default run's largest
def test_gptq_recipes_on_the_tiny_model(tiny_model, isolated_cache, tmp_path):
    shutil.copytree(isolated_cache / "pypi", tmp_path / "cache" / "pypi")  # the wheels this session fetched
    cmd = [sys.executable, "bench/recipes.py", "--study", "gptq", "--base", str(tiny_model), "--work", str(tmp_path)]
    proc = subprocess.run(
        [*cmd, "--windows", "2", "--recipes", *RECIPES, "--no-save"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = [line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "RECIPE" and sorted(table[1:]) == sorted(RECIPES)

    reports, weights, configs = {}, {}, {}
    for recipe in RECIPES:
        (folder,) = (tmp_path / "gptq" / recipe / "out").iterdir()
        reports[recipe] = json.loads((folder / "report.json").read_text())
        weights[recipe] = load_file(folder / "model.safetensors")
        configs[recipe] = json.loads((folder / "quantize_config.json").read_text())
        for text in ("wiki", "news"):  # both texts scored
            checks = json.loads((tmp_path / "gptq" / recipe / f"checks-{text}.json").read_text())
            (entry,) = checks.values()
            assert entry["inputs_hash"] == reports[recipe]["inputs_hash"] and entry["mean_kld"] > 0
    params = {r: reports[r]["inputs"]["params"] for r in RECIPES}
    assert params["mse-2.4"]["mse"] == 2.4 and params["plain"]["mse"] == 0
    assert params["gptaq"]["gptaq"] and not params["plain"]["gptaq"]
    assert reports["chat-mix"]["inputs"]["calibration"]["chat_samples"] == 64
    assert params["autoround"]["autoround"] == {"iters": 50, "batch_size": 8} and not params["autoround"]["desc_act"]
    sizes = [r["total_bytes"] for r in reports.values()]  # same layout, same size (the engines' headers differ)
    assert max(sizes) - min(sizes) < 1024, sizes
    # Every option changed the quantized weights; the published config stays AutoGPTQ's key set (no new keys).
    qweights = [k for k in weights["plain"] if k.endswith(".qweight")]
    for recipe in RECIPES[1:]:
        assert any((weights[recipe][k] != weights["plain"][k]).any() for k in qweights), recipe
        assert configs[recipe].keys() == configs["plain"].keys()
