"""Issue #28: the base model's smoke replies at the mission's size, measured, not predicted.

Why: the smoke gate and the chat eval compare every variant with the unquantized model's own greedy
replies, which the check generates once per base with the base loaded whole in its 16-bit dtype. At
7B that is the check's largest step on a CPU; `plan` counts it (1.0x fp16 + one batch's KV cache).
This loads bench/full7b.py's random-weight zephyr-7b-beta (32 layers, bf16 shards; written there
first if missing), renders the packaged 24-prompt suite through a zephyr-style template and generates
the replies the way `check` does (checks/chat.py: batches of 8, 96 tokens, the chat eval's length),
then prints time and peak RSS against the plan's prediction and the 1.3x-fp16 goal, and writes
results/replies7b.json. Random weights never emit the end token: every reply runs its full length,
the worst case for time and KV cache.

    nice -n 10 .venv/bin/python bench/replies7b.py [--tokens 96]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import WORK, log, write_result
from full7b import FP16_BYTES, GOAL, make_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from quantize.basemodel import ResolvedBase  # noqa: E402
from quantize.checks.chat import ask  # noqa: E402
from quantize.checks.smoke import load_suite, prompt_ids  # noqa: E402
from quantize.estimate import PROCESS_RSS, REPLY_BATCH, REPLY_CONTEXT, kv_cache_bytes, workspace_bytes  # noqa: E402
from quantize.measure import Stages  # noqa: E402
from quantize.resources import DATA  # noqa: E402
from quantize.scoring import HFScorer  # noqa: E402

TEMPLATE = "<|system|>\n{system}</s>\n<|user|>\n{prompt}</s>\n<|assistant|>\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=96)
    args = ap.parse_args()
    import torch
    from transformers import AutoTokenizer

    model = make_model(WORK / "full7b" / "zephyr-7b-rnd")
    base = ResolvedBase(path=model, hash="full7b", source=str(model))
    tokenizer = AutoTokenizer.from_pretrained(model)
    suite = load_suite(DATA / "eval" / "smoke.yaml")
    asked = [prompt_ids(TEMPLATE, p, "You are a friendly chatbot.", tokenizer) for p in suite.prompts]
    longest = max(len(a) for a in asked if a is not None) + args.tokens
    tokens = REPLY_BATCH * REPLY_CONTEXT
    predicted = FP16_BYTES + kv_cache_bytes(base.config, tokens) + workspace_bytes(base.config, tokens) + PROCESS_RSS
    stages = Stages()
    with stages.stage("load"):
        scorer = HFScorer(model, "cpu", dtype=torch.bfloat16)
    with stages.stage("replies"):
        replies = ask(scorer, asked, args.tokens, tokenizer, desc="base replies")
    load, gen = stages.measures["load"], stages.measures["replies"]
    peak = max(load.peak_rss_bytes or 0, gen.peak_rss_bytes or 0)
    done = [r for r in replies if r is not None]
    rows = {
        "prompts": len(done),
        "skipped": len(replies) - len(done),
        "tokens_per_reply": args.tokens,
        "longest_conversation": longest,
        "load_seconds": load.seconds,
        "replies_seconds": gen.seconds,
        "tokens_per_second": round(sum(len(r) for r in done) / gen.seconds, 2),
        "peak_rss_bytes": peak,
        "predicted_bytes": predicted,
        "goal_bytes": int(GOAL),
        "peak_x_fp16": round(peak / FP16_BYTES, 3),
    }
    for key, value in rows.items():
        log(f"{key:22s} {value / 1e9:.2f} GB" if key.endswith("_bytes") else f"{key:22s} {value}")
    write_result("replies7b", rows)


if __name__ == "__main__":
    main()
