"""plan and matrix: predictions from config.json alone, held against real files; CI matrix and shards."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import ROOT, run_cli, write_config

from quantize import formats
from quantize.outputs import weight_bytes
from quantize.plan import Planner, format_table
from quantize.project import load_config
from quantize.selection import select

# Mistral-7B-v0.1 / zephyr-7b-beta hyperparameters, as published in their config.json.
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-05,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
# File sizes TheBloke/zephyr-7B-beta-GPTQ and -GGUF list (GB). Q2_K is left out: llama.cpp
# has changed its Q2_K mix since those files were made (3.08 GB then). Our k-quants carry an
# importance matrix by default (`i1-`); it changes the rounding, not the per-tensor types or sizes.
PUBLISHED_GB = {
    "gptq-4bit-128g": 4.16,
    "gptq-4bit-32g": 4.57,
    "gptq-4bit-64g": 4.29,
    "gptq-8bit": 7.52,
    "gptq-8bit-128g": 7.68,
    "gptq-8bit-32g": 8.17,
    "gguf-i1-q3_k_s": 3.16,
    "gguf-i1-q3_k_m": 3.52,
    "gguf-i1-q3_k_l": 3.82,
    "gguf-q4_0": 4.11,
    "gguf-i1-q4_k_s": 4.14,
    "gguf-i1-q4_k_m": 4.37,
    "gguf-q5_0": 5.00,
    "gguf-i1-q5_k_s": 5.00,
    "gguf-i1-q5_k_m": 5.13,
    "gguf-i1-q6_k": 5.94,
    "gguf-q8_0": 7.70,
}


@pytest.fixture(scope="module")
def zephyr_config(tmp_path_factory):
    """The repo's variants.yaml pointed at a folder holding only a 7B config.json (no weights, no hub)."""
    folder = tmp_path_factory.mktemp("mistral-7b")
    (folder / "model").mkdir()
    (folder / "model" / "config.json").write_text(json.dumps(MISTRAL_7B))
    doc = yaml.safe_load((ROOT / "variants.yaml").read_text())
    doc["base_model"]["path"] = str(folder / "model")
    path = folder / "variants.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    (folder / "calibration").mkdir()
    (folder / "calibration" / "wikitext2.yaml").write_text((ROOT / "calibration" / "wikitext2.yaml").read_text())
    return path


def test_plan_of_a_7b_is_complete_and_matches_published_sizes(zephyr_config):
    """(How long plan takes is bench's to measure, not a timed assertion that fails under load.)"""
    project = load_config(zephyr_config)
    planner = Planner(project, MISTRAL_7B, None)
    rows = planner.rows(list(project.variants))
    table = format_table(rows, planner.params)
    assert len(table.splitlines()) == len(project.variants) + 3
    by_name = {r.variant.name: r for r in rows}
    for name, gb in PUBLISHED_GB.items():
        assert by_name[name].bytes / 1e9 == pytest.approx(gb, rel=0.02), name
    assert 7.2e9 < planner.params < 7.3e9
    main = by_name["gptq-4bit-128g"]
    # Only clients a test saw load such a file (formats/clients.py): vLLM runs the static act-order layout,
    # not 8-bit on its CPU build; ExLlama is untested here, so plan never names it.
    assert main.clients == ["transformers", "vLLM"]
    assert by_name["gptq-8bit"].clients == ["transformers"] and "ExLlama" not in main.clients
    # RUN = weights + KV cache (2 x 32 layers x 8 heads x 128 x 4096 x 2 bytes = 0.54 GB) + workspace.
    assert main.run_bytes - main.load_bytes > 0.5e9
    q4 = by_name["gguf-i1-q4_k_m"]
    # TheBloke/zephyr-7B-beta-GGUF states "Max RAM required 6.87 GB" for Q4_K_M: the plan lands on the published figure.
    # Its importance matrix runs the model forward (a GPU runner); Q8_0 is static, a CPU job.
    assert q4.load_bytes / 1e9 == pytest.approx(6.87, abs=0.03) and q4.runner == "gpu"
    assert by_name["gguf-q8_0"].runner == "cpu"


def test_plan_cli_prints_the_table(zephyr_config):
    proc = run_cli("plan", "--config", str(zephyr_config), check=True)
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["VARIANT", "BRANCH", "/"]
    assert any(line.startswith("gguf-i1-q4_k_m") and "zephyr-7b-beta.i1-Q4_K_M.gguf" in line for line in lines)
    as_json = json.loads(run_cli("plan", "--config", str(zephyr_config), "--json", check=True).stdout)
    assert [r["variant"] for r in as_json] == [v.name for v in load_config(zephyr_config).variants]


def test_matrix_json_covers_every_variant_once(zephyr_config):
    entries = json.loads(run_cli("matrix", "--config", str(zephyr_config), check=True).stdout)
    names = [e["variant"] for e in entries]
    assert names == [v.name for v in load_config(zephyr_config).variants]
    assert len(set(names)) == len(names)
    assert {e["runner"] for e in entries} == {"gpu", "cpu"}
    assert all(e["memory_gb"] > 1 for e in entries)

    line = run_cli("matrix", "--config", str(zephyr_config), "--format", "github", check=True).stdout.strip()
    assert line.startswith("matrix=")
    assert [e["variant"] for e in json.loads(line.removeprefix("matrix="))["include"]] == names

    gguf = json.loads(run_cli("matrix", "--config", str(zephyr_config), "--filter", "format=gguf", check=True).stdout)
    assert gguf and all(e["format"] == "gguf" for e in gguf)
    eight = json.loads(run_cli("matrix", "--config", str(zephyr_config), "--filter", "gptq-8bit*", check=True).stdout)
    assert [e["variant"] for e in eight] == ["gptq-8bit-32g", "gptq-8bit-128g", "gptq-8bit"]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 25])
def test_shards_partition_the_matrix(n):
    variants = list(load_config(ROOT / "variants.yaml").variants)
    shards = [select(variants, None, f"{k}/{n}") for k in range(1, n + 1)]
    flat = [v.name for s in shards for v in s]
    assert sorted(flat) == sorted(v.name for v in variants)  # no gap
    assert len(flat) == len(set(flat))  # no overlap
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_bad_shard_and_filter_are_one_line_errors(zephyr_config):
    for args, words in (
        (["--shard", "5/4"], "between 1 and N"),
        (["--shard", "x"], "K/N"),
        (["--filter", "colour=red"], "unknown key 'colour'"),
    ):
        proc = run_cli("matrix", "--config", str(zephyr_config), *args)
        assert proc.returncode == 1 and words in proc.stderr and proc.stderr.count("\n") == 1


def test_predictions_hold_within_two_percent_of_built_files(tmp_path, tiny_model):
    variants = [
        {"format": "gptq", "bits": 4, "group_size": 32},
        {"format": "awq", "group_size": 32},
        {"format": "gguf", "matrix": {"quant_type": ["Q4_K_M", "Q3_K_S", "Q8_0"]}},
    ]
    config = write_config(tmp_path, tiny_model, variants)
    run_cli(
        "build",
        "--config",
        str(config),
        "--out",
        str(tmp_path / "out"),
        "--all",
        "--no-check",
        cwd=tmp_path,
        check=True,
    )
    planned = {
        r["variant"]: r for r in json.loads(run_cli("plan", "--config", str(config), "--json", check=True).stdout)
    }
    for folder in (tmp_path / "out").iterdir():
        report = json.loads((folder / "report.json").read_text())
        measured = weight_bytes(report)  # not the importance matrix published beside an i1 file
        assert report["predicted_bytes"] == pytest.approx(measured, rel=0.02), folder.name
        assert planned[report["variant"]["name"]]["predicted_bytes"] == report["predicted_bytes"]


def test_gptaq_memory_is_planned_and_refused_on_a_long_calibration_set(zephyr_config, tmp_path):
    """GPTAQ holds every calibration token's unquantized linear inputs: on zephyr's 128 x 4096 wikitext2 recipe
    plan predicts tens of GB (no 24 GB machine), on 128 x 512 a few; the plain solver's need is unchanged."""
    doc = yaml.safe_load(zephyr_config.read_text())

    def quantize_gb(**spec) -> float:
        doc["variants"] = [{"format": "gptq", "bits": 4, "group_size": 128, **spec}]
        path = zephyr_config.parent / "gptaq.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        project = load_config(path)
        needs = Planner(project, MISTRAL_7B, None).stage_needs(project.variants[0])
        return needs["quantize"].ram / 1e9

    plain, gptaq, short = quantize_gb(), quantize_gb(gptaq=True), quantize_gb(gptaq=True, seq_len=512)
    assert plain < 18.8 and quantize_gb(mse=2.4) == plain
    assert gptaq - plain == pytest.approx(4 * 128 * 4096 * (3 * 4096 + 14336) / 1e9, rel=0.2) and gptaq > 50
    assert short < 18.8  # 1.3x zephyr's fp16 size


def test_autoround_memory_grows_with_depth_past_a_24gb_machine_at_7b(zephyr_config):
    """AutoRound keeps each finished block in memory (formats/autoround.py, fitted to bench/sim7b.py): at 7B it
    needs more than 1.3x fp16 for either export, more for AWQ (whole model loaded) than for GPTQ (streamed),
    while gptqmodel's GPTQ fits."""
    doc = yaml.safe_load(zephyr_config.read_text())

    def quantize_gb(fmt: str, **spec) -> float:
        doc["variants"] = [{"format": fmt, "bits": 4, "group_size": 128, **spec}]
        path = zephyr_config.parent / "autoround.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        project = load_config(path)
        return Planner(project, MISTRAL_7B, None).stage_needs(project.variants[0])["quantize"].ram / 1e9

    gptq, awq, plain = quantize_gb("gptq", autoround={}), quantize_gb("awq", autoround={}), quantize_gb("gptq")
    fp16 = 2 * 7_241_732_096 / 1e9
    assert plain < 1.3 * fp16 < gptq < awq
    assert quantize_gb("gptq", autoround={}, seq_len=512) < gptq  # the cached block inputs and outputs


# SmolLM2-135M's hyperparameters (the offline default's config.json): small enough that float32 costs little.
SMOLLM2_135M = {
    **MISTRAL_7B,
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}


def test_gptq_computes_in_float32_on_a_cpu_without_bfloat16_where_memory_allows(zephyr_config):
    """Where a CPU emulates bfloat16 (torch at about 5x float32's time), gptqmodel's GPTQ runs in float32 if
    that keeps the memory rule or costs under FLOAT32_SLACK more; the plan counts the wider activations, so
    its need is the build's. AWQ stays 16-bit (gptqmodel's AWQ refuses float32), as does any CPU with
    bfloat16 in hardware and every GPU."""
    doc = yaml.safe_load(zephyr_config.read_text())

    def plan(fmt: str, config: dict, bf16: bool, gpu: bool = False, **spec) -> tuple[str | None, float]:
        doc["variants"] = [{"format": fmt, "bits": 4, "group_size": 32, **spec}]
        path = zephyr_config.parent / "dtype.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        project = load_config(path)
        variant = project.variants[0]
        planner = Planner(project, config, None, gpu=gpu, bf16=bf16)
        return formats.of(variant).engine_dtype(planner, variant), planner.stage_needs(variant)["quantize"].ram

    small = {"config": SMOLLM2_135M, "seq_len": 512}  # the offline default's 128 x 512 tokens
    (small32, small32_ram), (small16, small16_ram) = plan("gptq", bf16=False, **small), plan("gptq", bf16=True, **small)
    assert (small32, small16) == ("float32", "bfloat16")
    assert small32_ram - small16_ram == 2 * 2 * 128 * 512 * SMOLLM2_135M["hidden_size"]  # activations in and out
    assert plan("awq", bf16=False, **small)[0] == "bfloat16"
    assert plan("gptq", bf16=False, gpu=True, **small)[0] is None  # the engine's float16
    # On 128 x 4096 tokens float32 would add 1.2 GB, over the slack and the rule for so small a model.
    assert plan("gptq", SMOLLM2_135M, False)[0] == "bfloat16"

    # zephyr on 128 x 4096 tokens: float32 activations alone would be 17 GB, over 1.3x fp16 (18.8 GB) with the
    # layers; on 128 x 512 float32 keeps within it.
    full, full_ram = plan("gptq", MISTRAL_7B, False)
    short, short_ram = plan("gptq", MISTRAL_7B, False, seq_len=512)
    assert (full, short) == ("bfloat16", "float32")
    assert full_ram < 18.8e9 and short_ram < 18.8e9
