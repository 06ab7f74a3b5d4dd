"""AWQ end to end on the tiny model: GEMM layout, AutoAWQ-era configs, reload, packing order."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli, write_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # column held by each nibble of a GEMM qweight word


def autoawq_quant_config(group_size: int) -> dict:
    """`quant_config.json` as TheBloke's AWQ repos (AutoAWQ) have it, for a 4-bit GEMM file."""
    return {"zero_point": True, "q_group_size": group_size, "w_bit": 4, "version": "GEMM"}


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    work = tmp_path_factory.mktemp("awq")
    config = write_config(
        work,
        tiny_model,
        [{"format": "awq", "matrix": {"group_size": [32, 128]}, "include": [{"group_size": 128, "default": True}]}],
    )
    out = work / "out"
    run_cli("build", "--config", str(config), "--out", str(out), "--all", cwd=work, check=True)
    return {"out": out, "base": tiny_model, "config": config}


def test_configs_are_what_autoawq_clients_and_transformers_read(built):
    folder = built["out"] / "awq-4bit-128g"
    assert json.loads((folder / "quant_config.json").read_text()) == autoawq_quant_config(128)
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "awq",
        "zero_point": True,
        "group_size": 128,
        "bits": 4,
        "version": "gemm",
    }
    assert config["dtype"] == "float16"
    assert not (folder / "quantize_config.json").exists()
    for file in folder.glob("*.json"):
        assert "/tmp" not in file.read_text(), file.name
    report = json.loads((folder / "report.json").read_text())
    assert report["variant"]["format"] == "awq" and report["variant"]["repo"] == "tester/tiny-mistral-AWQ"
    assert report["variant"]["default"] and report["inputs"]["params"]["zero_point"] is True


def test_gemm_tensor_layout(built):
    with safe_open(built["out"] / "awq-4bit-32g" / "model.safetensors", "pt") as f:
        prefix = "model.layers.0.mlp.down_proj"
        in_f, out_f, gs = 512, 256, 32
        assert f.get_slice(f"{prefix}.qweight").get_shape() == [in_f, out_f // 8]
        assert f.get_slice(f"{prefix}.qzeros").get_shape() == [in_f // gs, out_f // 8]
        assert f.get_slice(f"{prefix}.scales").get_shape() == [in_f // gs, out_f]
        assert f.get_slice(f"{prefix}.scales").get_dtype() == "F16"
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "F16"


def _repack_natural_order(word: torch.Tensor) -> torch.Tensor:
    nibbles = [(word >> (4 * i)) & 0xF for i in range(8)]  # nibble i holds column AWQ_ORDER[i]
    out = torch.zeros_like(word)
    for i, column in enumerate(AWQ_ORDER):
        out |= nibbles[i] << (4 * column)
    return out


def test_reloads_in_transformers_and_a_wrong_packing_order_fails(built, tmp_path):
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 1024, (1, 96), generator=torch.Generator().manual_seed(2))

    def logits(folder):
        model = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
        with torch.no_grad():
            return model(ids).logits.float(), model

    base, _ = logits(built["base"])
    src = built["out"] / "awq-4bit-32g"
    quant, model = logits(src)
    err = ((quant - base).norm() / base.norm()).item()
    assert err < 0.3, err
    assert model.generate(ids[:, :8], max_new_tokens=6, do_sample=False).shape == (1, 14)

    broken = tmp_path / "natural-order"
    broken.mkdir()
    for f in src.iterdir():
        if f.name != "model.safetensors":
            (broken / f.name).write_bytes(f.read_bytes())
    tensors = load_file(src / "model.safetensors")
    for name in [n for n in tensors if n.endswith(("qweight", "qzeros"))]:
        tensors[name] = _repack_natural_order(tensors[name])
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    wrong, _ = logits(broken)
    wrong_err = ((wrong - base).norm() / base.norm()).item()
    assert wrong_err > 0.3 and wrong_err > 2 * err, (err, wrong_err)


def test_awq_group_size_that_does_not_divide_is_refused(tmp_path, tiny_model):
    config = write_config(tmp_path, tiny_model, [{"format": "awq", "group_size": 512}])
    proc = run_cli("build", "--config", str(config), "--out", str(tmp_path / "out"), "--all")
    assert proc.returncode == 2 and "512 does not divide the input width 256 of self_attn" in proc.stderr
