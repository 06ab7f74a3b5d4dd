"""GPTQ end to end on the tiny model: build, files other tools read, reload, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, run_cli, write_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from quantize import formats
from quantize.formats.gptq import GPTQSpec, autogptq_config
from quantize.plan import Planner
from quantize.project import load_config

AUTOGPTQ_KEYS = [
    "bits",
    "group_size",
    "damp_percent",
    "desc_act",
    "static_groups",
    "sym",
    "true_sequential",
    "model_name_or_path",
    "model_file_base_name",
    "quant_method",
    "checkpoint_format",
]

VARIANTS = [
    {
        "format": "gptq",
        "matrix": {"bits": [4, 8], "group_size": [32, -1]},
        "include": [{"bits": 4, "group_size": 32, "default": True}],
    }
]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    """Build 4-bit g32 and 8-bit no-group variants of the tiny model through the CLI."""
    work = tmp_path_factory.mktemp("gptq")
    config = write_config(work, tiny_model, VARIANTS)
    out = work / "out"
    proc = run_cli(
        "build",
        "--config",
        str(config),
        "--out",
        str(out),
        "--variant",
        "gptq-4bit-32g",
        "--variant",
        "gptq-8bit--1g-actorder_True",
        cwd=work,
        check=True,
    )
    return {"config": config, "out": out, "stdout": proc.stdout, "stderr": proc.stderr, "base": tiny_model}


def test_folder_layout_and_configs(built):
    folder = built["out"] / "gptq-4bit-32g-actorder_True"
    names = sorted(p.name for p in folder.iterdir())
    assert {
        "model.safetensors",
        "config.json",
        "quantize_config.json",
        "report.json",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= set(names)
    assert not [n for n in names if n.startswith(".") or n.endswith(".csv")]
    # Nothing of the engine's (offload folders, logs/) is left in the working directory.
    assert sorted(p.name for p in built["config"].parent.iterdir()) == ["calibration", "eval", "out", "variants.yaml"]
    qc = json.loads((folder / "quantize_config.json").read_text())
    assert list(qc) == AUTOGPTQ_KEYS
    # Act order in the static layout: groups in file order, so readers are told desc_act false (vLLM runs it).
    assert qc == {
        "bits": 4,
        "group_size": 32,
        "damp_percent": 0.1,
        "desc_act": False,
        "static_groups": True,
        "sym": True,
        "true_sequential": True,
        "model_name_or_path": None,
        "model_file_base_name": "model",
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
    }
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"] == qc
    assert config["model_type"] == "mistral"
    for file in folder.glob("*.json"):
        text = file.read_text()
        assert "/tmp" not in text and str(built["base"]) not in text, file.name
    eight = json.loads((built["out"] / "gptq-8bit--1g-actorder_True" / "quantize_config.json").read_text())
    assert eight["bits"] == 8 and eight["group_size"] == -1


def test_outputs_are_readable_by_others(built):
    """Files 0644 and folders 0755 (under the usual umask), as save_pretrained writes them, not 0600."""
    umask = os.umask(0o022)
    os.umask(umask)
    folder = built["out"] / "gptq-4bit-32g-actorder_True"
    assert oct(folder.stat().st_mode & 0o777) == oct(0o777 & ~umask)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "quantize_config.json", "report.json"} <= set(modes)
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


@pytest.mark.parametrize(
    "branch, bits, group", [("gptq-4bit-32g-actorder_True", 4, 32), ("gptq-8bit--1g-actorder_True", 8, -1)]
)
def test_tensor_layout_is_gptq_v1(built, branch, bits, group):
    with safe_open(built["out"] / branch / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        prefix = "model.layers.0.mlp.down_proj"
        in_f, out_f = 512, 256
        groups = 1 if group == -1 else in_f // group
        assert f.get_slice(f"{prefix}.qweight").get_shape() == [in_f * bits // 32, out_f]
        assert f.get_slice(f"{prefix}.qzeros").get_shape() == [groups, out_f * bits // 32]
        assert f.get_slice(f"{prefix}.scales").get_shape() == [groups, out_f]
        assert f.get_slice(f"{prefix}.g_idx").get_shape() == [in_f]
        assert f.get_slice(f"{prefix}.qweight").get_dtype() == "I32"
        assert f.get_slice(f"{prefix}.scales").get_dtype() == "F16"
        assert f.get_slice(f"{prefix}.g_idx").get_dtype() == "I32"
        assert f"{prefix}.weight" not in keys and "model.embed_tokens.weight" in keys
        if bits == 4:
            # v1 stores zero points minus one: symmetric 4-bit zeros are 7 in every nibble, not v2's 8.
            zeros = f.get_tensor(f"{prefix}.qzeros")
            assert torch.all(zeros == 0x77777777)


def _logits(folder, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
    with torch.no_grad():
        return model(ids).logits.float(), model


def _relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_reloads_in_transformers_close_to_base_and_generates(built, tmp_path):
    ids = torch.randint(0, 1024, (1, 96), generator=torch.Generator().manual_seed(1))
    base, _ = _logits(built["base"], ids)
    four, model = _logits(built["out"] / "gptq-4bit-32g-actorder_True", ids)
    eight, _ = _logits(built["out"] / "gptq-8bit--1g-actorder_True", ids)
    err4, err8 = _relative_error(four, base), _relative_error(eight, base)
    assert err8 < 0.03, err8
    assert err4 < 0.3, err4
    assert err8 < err4 / 3
    out = model.generate(ids[:, :8], max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 14)

    # A broken pack must fail the same bound: swap the nibble order of every qweight word.
    broken = tmp_path / "broken"
    broken.mkdir()
    src = built["out"] / "gptq-4bit-32g-actorder_True"
    for f in src.iterdir():
        if f.name != "model.safetensors":
            (broken / f.name).write_bytes(f.read_bytes())
    tensors = load_file(src / "model.safetensors")
    for name, t in tensors.items():
        if name.endswith("qweight"):
            lo, hi = t & 0x0F0F0F0F, (t >> 4) & 0x0F0F0F0F
            tensors[name] = (lo << 4) | hi
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    wrong, _ = _logits(broken, ids)
    assert _relative_error(wrong, base) > 0.3


def test_report_records_inputs_versions_timings_and_files(built):
    folder = built["out"] / "gptq-4bit-32g-actorder_True"
    report = json.loads((folder / "report.json").read_text())
    assert report["status"] == "passed" and report["variant"]["branch"] == folder.name
    checks = report["checks"]
    assert (
        # A random 2-layer model on a 1024-token vocabulary scores close to the vocabulary size.
        checks["passed"] and 500 < checks["base_ppl"] < 2000 and checks["eval"]["scored_tokens"] == 4 * 63
    )
    assert [v["gate"] for v in checks["verdicts"]] == [
        "max_ppl_ratio",
        "max_mean_kld",
        "min_top1",
        "chat_template",
        "smoke",
    ]
    assert checks["replies"][0]["prompt"] == "What is the capital of France?"
    assert report["variant"]["default"] is True and report["variant"]["repo"] == "tester/tiny-mistral-GPTQ"
    calib = report["inputs"]["calibration"]
    assert calib["samples"] == 8 and calib["seq_len"] == 128 and len(calib["hash"]) == 64
    assert calib["documents"] > 8000 and calib["tokens"] > 500_000
    assert report["inputs"]["base_model"]["hash"]
    assert {"torch", "transformers", "gptqmodel", "quantize"} <= set(report["versions"])
    assert report["stages"]["quantize"]["seconds"] > 0 and report["stages"]["quantize"]["peak_rss_bytes"] > 50e6
    files = {f["path"]: f for f in report["files"]}
    assert files["model.safetensors"]["size"] == (folder / "model.safetensors").stat().st_size
    assert report["total_bytes"] == sum(f["size"] for f in report["files"])
    assert report["module_losses"], "gptqmodel's per-module loss log belongs in the report"
    # The dtype gptqmodel computed in is the one the planner chose for this machine (float32 where the CPU
    # emulates bfloat16 and memory allows), so plan's need and the build agree.
    project = load_config(built["config"])
    variant = next(v for v in project.variants if v.name == "gptq-4bit-32g")
    planner = Planner(project, json.loads((built["base"] / "config.json").read_text()), built["base"])
    assert report["compute_dtype"] == formats.of(variant).engine_dtype(planner, variant) in ("float32", "bfloat16")


def test_rerun_skips_unchanged_and_force_rebuilds(built):
    folder = built["out"] / "gptq-8bit--1g-actorder_True"
    before = (folder / "model.safetensors").stat().st_mtime_ns
    again = run_cli(
        "build", "--config", str(built["config"]), "--out", str(built["out"]), "--variant", "gptq-8bit", check=True
    )
    assert "up to date" in again.stdout and "up to date" in again.stderr
    assert (folder / "model.safetensors").stat().st_mtime_ns == before
    forced = run_cli(
        "build",
        "--config",
        str(built["config"]),
        "--out",
        str(built["out"]),
        "--variant",
        "gptq-8bit",
        "--force",
        check=True,
    )
    assert " built " in forced.stdout
    assert (folder / "model.safetensors").stat().st_mtime_ns != before


def _start_build(built, variant):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quantize",
            "build",
            "--config",
            str(built["config"]),
            "--out",
            str(built["out"]),
            "--variant",
            variant,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for_partial(out, branch, proc):
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        partial = list(out.glob(f".{branch}.partial-*"))
        if partial:
            time.sleep(2)  # let it get into the engine
            return partial[0]
        time.sleep(0.1)
    raise AssertionError("the build never staged a folder")


def test_sigterm_build_removes_its_staging_folder(built):
    out, branch = built["out"], "gptq-8bit-32g-actorder_True"
    proc = _start_build(built, "gptq-8bit-32g")
    partial = _wait_for_partial(out, branch, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    assert not partial.exists() and not (out / branch).exists()


def test_killed_build_leaves_no_folder_and_next_run_builds(built):
    out, branch = built["out"], "gptq-4bit--1g-actorder_True"
    proc = _start_build(built, "gptq-4bit")
    partial = _wait_for_partial(out, branch, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.exists() and not (out / branch).exists()
    rerun = run_cli("build", "--config", str(built["config"]), "--out", str(out), "--variant", "gptq-4bit", check=True)
    assert " built " in rerun.stdout
    assert (out / branch / "report.json").is_file()
    assert not list(out.glob(f".{branch}.partial-*"))


def test_group_size_that_does_not_divide_is_refused_before_work(tmp_path, tiny_model):
    config = write_config(tmp_path, tiny_model, [{"format": "gptq", "bits": 4, "group_size": 512}])
    start = time.time()
    proc = run_cli("build", "--config", str(config), "--out", str(tmp_path / "out"), "--all")
    assert proc.returncode == 2
    assert (
        "512 does not divide the input width 256" in proc.stderr and "use one of: 32, 64, 128, 256, -1" in proc.stderr
    )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert time.time() - start < 60


def test_static_act_order_writes_plain_groups_and_a_permuted_one_is_refused(built, tmp_path):
    """The layout `desc_act: false` promises is checked on the written g_idx (negative control: a permuted one)."""
    import shutil

    from quantize.errors import EngineError
    from quantize.formats.gptq import check_plain_g_idx

    folder = built["out"] / "gptq-4bit-32g-actorder_True"
    check_plain_g_idx(folder, 32)
    tampered = tmp_path / "tampered"
    shutil.copytree(folder, tampered)
    tensors = load_file(tampered / "model.safetensors")
    name = next(n for n in tensors if n.endswith(".g_idx"))
    tensors[name] = tensors[name].flip(0).contiguous()
    save_file(tensors, tampered / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(EngineError, match=f"{name} is reordered"):
        check_plain_g_idx(tampered, 32)


def test_autogptq_config_matches_thebloke_main():
    """TheBloke's main: dynamic act order (`static_groups: false` selects that layout)."""
    spec = GPTQSpec(format="gptq", bits=4, group_size=128, desc_act=True, damp_percent=0.01, static_groups=False)
    published = {
        "bits": 4,
        "group_size": 128,
        "damp_percent": 0.01,
        "desc_act": True,
        "sym": True,
        "true_sequential": True,
    }
    config = autogptq_config(spec)
    assert {k: config[k] for k in published} == published
