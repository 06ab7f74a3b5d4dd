"""Baseline for overhead.py: GPTQ by calling gptqmodel directly, with nothing of the toolkit.

Why: issue #8.1 asks what the toolkit costs on top of the engine. This is the minimal
script a person would write: load the checkpoint, quantize on the given calibration
token windows, save. It takes the same inputs the toolkit uses (the same checkpoint
folder, the same token array, the same QuantizeConfig fields, bfloat16 on a CPU) and
prints one JSON line with the seconds of load + quantize + save.

    .venv/bin/python bench/raw_gptq.py --model DIR --tokens calib.npy --out DIR --bits 4 --group-size 32
"""

import argparse
import contextlib
import json
import os
import tempfile
import time

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # gptqmodel 7.7 fails at load on 2 cores without it


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", required=True, help=".npy of [samples, seq_len] int64 token ids")
    p.add_argument("--out", required=True)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=32)
    p.add_argument("--damp-percent", type=float, default=0.1)
    p.add_argument("--no-desc-act", action="store_true")
    args = p.parse_args()

    import numpy as np
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig

    ids = np.load(args.tokens)
    out = os.path.abspath(args.out)
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        config = QuantizeConfig(
            bits=args.bits,
            group_size=args.group_size,
            desc_act=not args.no_desc_act,
            act_group_aware=False,
            damp_percent=args.damp_percent,
            sym=True,
            true_sequential=True,
            static_groups=False,
            device="cpu",
            offload_to_disk_path=os.path.join(work, "offload"),
        )
        samples = [
            {
                "input_ids": torch.from_numpy(r).unsqueeze(0),
                "attention_mask": torch.ones(1, r.shape[0], dtype=torch.long),
            }
            for r in ids
        ]
        with contextlib.chdir(work):
            model = GPTQModel.load(os.path.abspath(args.model), config, dtype=torch.bfloat16)
            model.quantize(samples, batch_size=1)
            model.save(out, max_shard_size=None)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": round(seconds, 3)}))


if __name__ == "__main__":
    main()
