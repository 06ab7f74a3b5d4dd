"""Baseline for overhead.py: a GGUF quant type by calling llama.cpp (llama-cpp-python) directly.

Why: issue #8.1 compares the toolkit's GGUF quantize stage with the same call made
bare: llama_model_quantize on the same F16 GGUF, same file type, same thread count.
Prints one JSON line with the seconds of the call.

    .venv/bin/python bench/raw_gguf.py --f16 model.F16.gguf --out model.Q4_K_M.gguf --type Q4_K_M
"""

import argparse
import json
import os
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--f16", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--type", default="Q4_K_M", help="llama.cpp file type, e.g. Q4_K_M, Q8_0")
    args = p.parse_args()

    import ctypes

    import gguf
    import llama_cpp

    start = time.perf_counter()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(gguf.LlamaFileType[f"MOSTLY_{args.type}"])
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(args.f16.encode(), args.out.encode(), ctypes.byref(params))
    seconds = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"llama_model_quantize returned {rc}")
    print(json.dumps({"seconds": round(seconds, 3)}))


if __name__ == "__main__":
    main()
