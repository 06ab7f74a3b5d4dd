"""Weight-only formats made by gptqmodel (GPTQ, AWQ): the engine run, and what the two formats share.

`GPTQModelFormat` holds what GPTQ and AWQ have in common (safetensors on a branch per
variant, calibration tokens, loading through transformers, the card's parameter table and
usage); gptq.py and awq.py say what to quantize and which configs to publish. The engine
run loads the model, feeds it the cached calibration windows, saves, and cleans the
folder: tokenizer files present, float tensors in float16 (what GPTQ/AWQ readers
expect), gptqmodel's loss log moved into the report, no local paths.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..basemodel import TOKENIZER_FILES
from ..card.markdown import CardInputs, Row, base_ppl, branch_cell, calibration_cells, gb, quality, table, vram
from ..devices import compute_device
from ..errors import EngineError
from ..outputs import assert_no_local_paths, write_json
from ..records import package_versions
from ..shapes import check_group_size
from .autoround import PACKAGE as AUTOROUND
from .autoround import autoround_needs
from .base import BuildJob, EngineResult, Format, Needs, PlanWork

log = logging.getLogger(__name__)


class GPTQModelFormat(Format):
    """GPTQ and AWQ: calibrated, weight-only, safetensors on a branch per variant, read by transformers and servers."""

    engine_packages: ClassVar[tuple[str, ...]] = ("gptqmodel", "torch", "transformers")
    config_files: ClassVar[str]  # the card's compatibility line: which files carry the parameters

    @abstractmethod
    def quantize(self, base_path: Path, spec, input_ids: np.ndarray, out: Path) -> EngineResult: ...

    def validate(self, spec, config: dict, config_file: Path, where: str, name: str) -> None:
        check_group_size(config, spec.group_size, where, name)

    def plan_work(self, planner, variant) -> PlanWork:
        recipe = planner.recipe(variant.calibration)
        seq_len = variant.spec.seq_len or recipe.seq_len
        samples = variant.spec.samples or recipe.samples
        work = f"{samples} x {seq_len} tokens of {variant.calibration}"
        tuned = variant.spec.autoround
        if tuned:
            work = f"AutoRound, {tuned.iters} steps per block, on {work}"
        return PlanWork("model.safetensors", work, seq_len)

    def stage_needs(self, planner, variant) -> dict[str, Needs]:
        """gptqmodel offloads the model to disk (run_gptqmodel gives it a folder) and brings in one layer at a
        time, with every calibration sample's hidden states for it (16-bit, twice: inputs and outputs); at the
        end it holds the packed model to save it. On a CPU at 7B (bench/full7b.py): 4.4 GB through the layers,
        6.8 GB at the end (4.2 GB file). Loading it for the check on a CPU converts v1 to v2 and repacks for the
        AVX-512 kernel: 10.9 GB for the 4.2 GB file. On a GPU the host side is not measured yet: the whole
        16-bit model is assumed."""
        work = self.plan_work(planner, variant)
        samples = variant.spec.samples or planner.recipe(variant.calibration).samples
        tokens = samples * work.seq_len
        size = self.predict_bytes(planner, variant.spec) or 0
        check = planner.check_needs(size if planner.gpu else int(2.5 * size))
        if variant.spec.autoround:
            return {"quantize": autoround_needs(planner, tokens, size, self.name), "check": check}
        acts = 2 * 2 * tokens * planner.config["hidden_size"] + self.extra_acts(planner, variant.spec, tokens)
        if planner.gpu:
            quantize = Needs(ram=planner.fp16_bytes, vram=planner.layer_bytes(2) + acts, disk_out=size)
        else:
            head = 2 * planner.config["vocab_size"] * planner.config["hidden_size"] * 4
            layers = 3 * planner.layer_bytes(4) + head + acts
            quantize = Needs(ram=max(layers, size + head + planner.layer_bytes(4)), disk_out=size)
        return {"quantize": quantize, "check": check}

    def extra_acts(self, planner, spec, tokens: int) -> int:
        """Activation memory a recipe option adds for the `tokens` calibration tokens (none by default)."""
        return 0

    def build(self, job: BuildJob) -> EngineResult:
        with job.stages.stage("quantize"):
            return self.quantize(job.base.path, job.variant.spec, job.calibration.input_ids, job.out)

    def load_kwargs(self, spec, base_config: dict, device: str) -> dict:
        """Extra `from_pretrained` arguments a layout needs on this device."""
        return {}

    def load(self, folder: Path, variant, n_ctx: int, base_config: dict):
        import torch

        from ..checks.scoring import HFScorer

        device = compute_device()
        # float16 matmuls are ~40x slower than bfloat16 on a CPU (38 s vs 0.8 s for a 512-token forward of 4-bit
        # SmolLM2): checks on a CPU compute in bfloat16, GPUs in the file's float16.
        dtype = torch.bfloat16 if device == "cpu" else None
        return HFScorer(folder, device, dtype=dtype, **self.load_kwargs(variant.spec, base_config, device))

    # -- card -------------------------------------------------------------------------------------------------------
    def card_tags(self, rows: list[Row]) -> list[str]:
        return [self.name, "quantized", f"{min(r.variant.spec.bits for r in rows)}-bit"]

    def engine_inputs(self, spec) -> dict[str, str]:
        """An AutoRound variant's bytes also depend on auto-round's version."""
        return {AUTOROUND: package_versions().get(AUTOROUND, "?")} if spec.autoround else {}

    def card_engine(self, rows: list[Row]) -> str:
        """gptqmodel, auto-round, or both, as the variants on this card were made."""
        made = []
        for tuned, package in ((False, "gptqmodel"), (True, AUTOROUND)):
            used = [r for r in rows if bool(r.variant.spec.autoround) is tuned]
            if used:
                made.append(f"{package} {used[0].report.versions.get(package, '')}".strip())
        return " and ".join(made)

    @abstractmethod
    def card_row(self, r: Row) -> tuple[str, str, str]:
        """(Act Order, Damp %, Desc) cells of a variant's row."""

    def card_provided(self, c: CardInputs) -> str:
        head = [
            "Branch",
            "Bits",
            "GS",
            "Act Order",
            "Damp %",
            "GPTQ Dataset",
            "Seq Len",
            "Size",
            "Loads in",
            "PPL",
            "Δ PPL",
            "KLD",
            "VRAM",
            "Desc",
        ]
        ppl = base_ppl(c)
        base = (
            None
            if ppl is None
            else (
                ["unquantized", "16"] + ["-"] * 7 + [f"{ppl:.3f}"] + ["-"] * 3 + ["the original model, for reference"]
            )
        )
        rows = []
        for r in sorted(c.rows, key=lambda r: (not r.variant.default, r.variant.spec.bits, r.variant.spec.group_size)):
            spec, v = r.variant.spec, r.variant
            dataset, seq = calibration_cells(r.report)
            act, damp, desc = self.card_row(r)
            rows.append(
                [
                    branch_cell(c, v),
                    str(spec.bits),
                    str(spec.group_size),
                    act,
                    damp,
                    dataset,
                    seq,
                    gb(r.size),
                    ", ".join(self.clients(spec)),
                    *quality(r),
                    vram(r),
                    desc,
                ]
            )
        intro = (
            "Each branch holds one set of parameters; `main` holds the default. PPL and KLD are measured against "
            "the unquantized model on held-out text (lower is better); Δ PPL is the increase over it. VRAM is the "
            "peak measured on a GPU for one forward pass at the calibration sequence length, or `~` a prediction "
            "from config.json where no GPU was used. Bits and GS are the quantization bits and group size (-1: "
            "none); Act Order is whether columns were quantized in activation order, and in which layout (static: "
            "groups in file order, `desc_act: false` in the config, run as is by every reader; dynamic: "
            "AutoGPTQ's `desc_act: true`); Damp % is GPTQ's dampening; the dataset and sequence length are those "
            "of the calibration samples, which are not the training data. Loads in: the clients that loaded such "
            "a file in this toolkit's tests (see Compatibility)."
        )
        return f"## Provided files, and {self.title} parameters\n\n{intro}\n\n{table(head, base, rows)}"

    def card_download(self, c: CardInputs) -> str:
        repo = c.repo
        example = next((r.variant.branch for r in c.rows if not r.variant.default), c.rows[0].variant.branch)
        return "\n".join(
            [
                "## How to download from branches",
                "",
                f"- In text-generation-webui, enter `{repo}:{example}` in the download box "
                f"(`{repo}` alone gets `main`).",
                "- From the command line:",
                "",
                "```shell",
                f"hf download {repo} --revision {example} --local-dir {repo.split('/')[-1]}",
                "```",
                "",
                "With huggingface_hub older than 1.0: "
                f"`huggingface-cli download {repo} --revision {example} --local-dir {repo.split('/')[-1]}`.",
                "- From Python: `snapshot_download(repo_id, revision=BRANCH)`.",
            ]
        )

    def card_usage(self, c: CardInputs) -> str:
        repo = c.repo
        default = next((r for r in c.rows if r.variant.default), c.rows[0])
        lines = [
            "## How to run it",
            "",
            "transformers (5.x loads GPTQ and AWQ through gptqmodel: `pip install transformers gptqmodel`):",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f"repo, branch = {repo!r}, 'main'",
            "tokenizer = AutoTokenizer.from_pretrained(repo, revision=branch)",
            "model = AutoModelForCausalLM.from_pretrained(repo, revision=branch, device_map='auto')",
            "messages = [{'role': 'user', 'content': 'Tell me about AI'}]",
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt')"
            ".to(model.device)",
            "output = model.generate(inputs, max_new_tokens=256)",
            "print(tokenizer.decode(output[0][inputs.shape[1]:], skip_special_tokens=True))",
            "```",
            "",
        ]
        vllm = [r for r in c.rows if "vLLM" in self.clients(r.variant.spec)]
        if vllm:
            branch = "main" if default in vllm else vllm[0].variant.branch
            lines += [
                "vLLM (it reads the quantization from config.json; float16 runs on every platform it supports):",
                "",
                "```shell",
                f"vllm serve {repo} --revision {branch} --dtype float16",
                "```",
                "",
            ]
        return "\n".join(lines + [self._compatibility(c)])

    def _compatibility(self, c: CardInputs) -> str:
        """Per branch, which clients load it, from the tested table (formats/clients.py), and why not."""
        rows = sorted(c.rows, key=lambda r: (not r.variant.default, r.variant.spec.bits, r.variant.spec.group_size))
        support = {r.variant.branch: self.support(r.variant.spec) for r in rows}
        clients = list(dict.fromkeys(s.client for entries in support.values() for s in entries))
        cells = [
            [r.variant.branch]
            + [next((s.mark for s in support[r.variant.branch] if s.client == name), "-") for name in clients]
            for r in rows
        ]
        notes = dict.fromkeys(
            f"{s.client} ({s.checked}): {s.note}" for entries in support.values() for s in entries if s.note
        )
        return "\n".join(
            [
                "## Compatibility",
                "",
                "The files follow the layout AutoGPTQ/AutoAWQ wrote, which transformers and vLLM read: "
                f"{self.config_files} `yes` means a test of this toolkit loaded such a file in that client and matched "
                "the transformers perplexity; `no` that the client refused it; `untested` that nothing here ran it.",
                "",
                table(["Branch", *clients], None, cells),
                "",
                *[f"- {note}" for note in notes],
            ]
        )


def prepare_engine_env() -> None:
    """gptqmodel 7.7 fails at load on small machines unless its CPU pool size is given."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
    os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")


def run_gptqmodel(base_path: Path, qconfig: dict[str, Any], input_ids: np.ndarray, out: Path) -> EngineResult:
    """Quantize `base_path` with a gptqmodel QuantizeConfig built from `qconfig`, saving into `out`."""
    prepare_engine_env()
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig

    device = compute_device()
    # CPUs run float16 several times slower than bfloat16; the saved tensors are cast to
    # float16 afterwards either way, so the device does not change what is published.
    dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16
    # gptqmodel offloads to disk and writes logs/ under the working directory: keep both
    # inside the staged folder (removed with it if the build dies), never in the user's cwd.
    out = Path(out).resolve()
    workdir = out / ".engine"
    (workdir / "offload").mkdir(parents=True)
    try:
        config = QuantizeConfig(**qconfig, device=device, offload_to_disk_path=str(workdir / "offload"))
        log.info("gptqmodel: loading %s on %s (%s)", base_path, device, str(dtype).removeprefix("torch."))
        samples = [
            {
                "input_ids": torch.from_numpy(row).unsqueeze(0),
                "attention_mask": torch.ones(1, row.shape[0], dtype=torch.long),
            }
            for row in input_ids
        ]
        with contextlib.chdir(workdir):
            model = GPTQModel.load(str(Path(base_path).resolve()), config, dtype=dtype)
            log.info(
                "gptqmodel: %s %d-bit, %d samples x %d tokens",
                qconfig.get("method", "gptq"),
                qconfig["bits"],
                *input_ids.shape,
            )
            try:
                model.quantize(samples, batch_size=1)
            except (ValueError, RuntimeError) as err:
                raise EngineError(f"gptqmodel failed: {str(err).splitlines()[0]}") from err
            model.save(str(out), max_shard_size=None)
        del model
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    finish_folder(base_path, out)
    return EngineResult(device=device, dtype="float16", module_losses=_take_loss_log(out))


def finish_folder(base_path: Path, out: Path) -> None:
    """What every engine's folder gets before its configs are published: the base's tokenizer files, and
    unquantized tensors in float16 (engines save them in their compute dtype)."""
    _copy_tokenizer(base_path, out)
    _cast_to_float16(out)


def publish_configs(
    out: Path, quantization_config: dict, extra_files: dict[str, dict], drop: tuple[str, ...] = ()
) -> None:
    """Replace gptqmodel's configs by the published ones, then refuse any local path left."""
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = quantization_config
    config.pop("_name_or_path", None)
    write_json(out / "config.json", config)
    for name in drop:
        (out / name).unlink(missing_ok=True)
    for name, value in extra_files.items():
        write_json(out / name, value)
    assert_no_local_paths(out)


def written_quantize_config(out: Path) -> dict:
    return json.loads((out / "quantize_config.json").read_text())


def engine_config(out: Path) -> dict:
    """`config.json`'s quantization_config as the engine wrote it (before publish_configs replaces it)."""
    return json.loads((out / "config.json").read_text()).get("quantization_config", {})


def _copy_tokenizer(base_path: Path, out: Path) -> None:
    for name in TOKENIZER_FILES:
        if (Path(base_path) / name).is_file() and not (out / name).exists():
            shutil.copy2(Path(base_path) / name, out / name)


def _cast_to_float16(out: Path) -> None:
    """Unquantized tensors (embeddings, norms, lm_head) and scales as float16, as readers expect."""
    import torch
    from safetensors.torch import load_file, save_file

    for file in sorted(out.glob("*.safetensors")):
        tensors = load_file(file)
        changed = False
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and tensor.dtype != torch.float16:
                cast = tensor.to(torch.float16)
                if not torch.isfinite(cast).all():
                    raise EngineError(
                        f"{file.name}: {name} overflows float16; this model cannot be published in float16"
                    )
                tensors[name], changed = cast, True
        if changed:
            save_file(tensors, file, metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "float16"
    config.pop("torch_dtype", None)
    write_json(out / "config.json", config)


def _take_loss_log(out: Path) -> list[dict]:
    """gptqmodel's per-module loss log belongs in report.json, not on the hub branch."""
    log_file = out / "quant_log.csv"
    if not log_file.is_file():
        return []
    with open(log_file, newline="") as handle:
        rows = [dict(row) for row in csv.DictReader(handle)]
    log_file.unlink()
    return rows
