#!/usr/bin/env bash
# One short GPU run (under 8 minutes on an H100/H200): the SmolLM2 matrix (GPTQ + GGUF, imatrix
# included) built and checked on CUDA, then 1- and 2-layer zephyr-7B-shaped GPTQ and AWQ timings
# and AutoRound memory (bench/sim7b.py), printed as one JSON object on stdout (logs go to stderr and bench/results/).
#
#   bash bench/gpu.sh > bench/results/gpu.json
#
# It installs nothing beyond ./install.sh (run that first); the device needs only a CUDA torch,
# which the pinned torch 2.14.1 wheel from PyPI is.
set -euo pipefail
cd "$(dirname "$0")/.."
export QUANTIZE_NO_PROGRESS=1 PYTHONUNBUFFERED=1 QUANTIZE_CACHE="${QUANTIZE_CACHE:-$PWD/.bench-gpu/cache}"
out="$PWD/.bench-gpu/out"
mkdir -p "$out" bench/results
python=.venv/bin/python
$python -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name(0))' >&2

start=$(date +%s)
# The default matrix minus AWQ (AWQ is timed per layer below); checks run on CUDA.
$python -m quantize build --config examples/smollm2.yaml --all --filter 'format=gguf' --out "$out" >&2
$python -m quantize build --config examples/smollm2.yaml --all --filter 'format=gptq' --out "$out" >&2
matrix_s=$(( $(date +%s) - start ))
$python -m quantize plan --config examples/smollm2.yaml --json > "$out/plan.json"

start=$(date +%s)
$python bench/sim7b.py --format gptq awq gptq-autoround --layers 1 2 --samples 32 --seq-len 512 >&2
sim_s=$(( $(date +%s) - start ))

$python - "$out" "$matrix_s" "$sim_s" <<'PY'
import json, sys
from pathlib import Path

out, matrix_s, sim_s = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
plan = {row["variant"]: row for row in json.loads((out / "plan.json").read_text())}
variants = {}
for report_file in sorted(out.glob("*/report.json")):
    r = json.loads(report_file.read_text())
    name, checks = r["variant"]["name"], r.get("checks") or {}
    memory = checks.get("memory") or {}
    variants[name] = {
        "status": r["status"], "device": r["device"],
        "stages": {k: {"seconds": v["seconds"], "peak_cuda_gb": (v.get("peak_cuda_bytes") or 0) / 1e9,
                       "peak_rss_gb": (v.get("peak_rss_bytes") or 0) / 1e9} for k, v in r["stages"].items()},
        "predicted_stages_gb": {k: {"ram": v["ram"] / 1e9, "vram": v["vram"] / 1e9}
                                for k, v in plan.get(name, {}).get("stages", {}).items()},
        "check_forward_cuda_gb": (memory.get("forward_cuda_bytes") or 0) / 1e9,
        "ppl": checks.get("ppl"), "mean_kld": checks.get("mean_kld"),
    }
sim = Path("bench/results/sim7b.json")
print(json.dumps({"matrix_seconds": matrix_s, "sim7b_seconds": sim_s, "variants": variants,
                  "sim7b": json.loads(sim.read_text()) if sim.is_file() else None}, indent=1))
PY
