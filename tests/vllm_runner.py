"""Runs inside the vLLM environment: load each folder, score token windows, greedy-generate prompts.

python vllm_runner.py JOB.json  ->  one JSON line per folder on stdout:
{"folder", "loaded", "error" (at load, or at the first forward once loaded),
 "token_logprobs" (per window, positions 1..n-1), "replies"}
The engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so a refusal's real message reaches us.
"""

import json
import os
import sys

for key, value in {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "auto",
    "VLLM_CPU_INT4_W4A8": "0",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_LOGGING_LEVEL": "WARNING",
}.items():
    os.environ.setdefault(key, value)


def root_error(err):
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: " + " | ".join(lines[:3])


def run(folder, windows, prompts, max_new_tokens, max_model_len):
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    out = {"folder": folder, "loaded": False, "error": None}
    try:
        # float16: bfloat16 attention on AMX CPUs died with SIGILL; float16 runs everywhere vLLM does.
        llm = LLM(model=folder, dtype="float16", max_model_len=max_model_len, enforce_eager=True, seed=0)
    except BaseException as err:  # noqa: BLE001 - whatever stopped the load is the answer
        out["error"] = root_error(err)
        return out
    out["loaded"] = True
    try:  # a file can load and still fail its first forward (a kernel this CPU's build lacks): report that too
        scored = llm.generate(
            [TokensPrompt(prompt_token_ids=w) for w in windows],
            SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0),
            use_tqdm=False,
        )
        out["token_logprobs"] = [
            [res.prompt_logprobs[j][w[j]].logprob for j in range(1, len(w))] for w, res in zip(windows, scored)
        ]
        if prompts:
            generated = llm.generate(
                [TokensPrompt(prompt_token_ids=p) for p in prompts],
                SamplingParams(max_tokens=max_new_tokens, temperature=0.0),
                use_tqdm=False,
            )
            out["replies"] = [list(g.outputs[0].token_ids) for g in generated]
    except BaseException as err:  # noqa: BLE001
        out["error"] = root_error(err)
    del llm
    return out


if __name__ == "__main__":
    job = json.load(open(sys.argv[1]))
    for folder in job["folders"]:
        print(
            json.dumps(
                run(
                    folder,
                    job["windows"],
                    job.get("prompts", []),
                    job.get("max_new_tokens", 16),
                    job.get("max_model_len", 256),
                )
            ),
            flush=True,
        )
