"""GPTQ, written as the GPTQ v1 checkpoint every GPTQ reader loads.

gptqmodel quantizes and packs; this module configures it and publishes the AutoGPTQ
key set as `quantize_config.json`, identical to `config.json`'s `quantization_config`,
without the metadata (and temporary paths) gptqmodel 7.7 records.

Act order comes in two layouts. Dynamic (AutoGPTQ's, TheBloke's `desc_act: true`): groups
follow the activation order, so `g_idx` is a permutation readers must apply at run time;
vLLM 0.32 refuses it ("GPTQ group activation ordering (desc_act=True) is no longer
supported"). Static (the default here): columns are still quantized in activation order,
but groups are fixed in file order (`static_groups`), so `g_idx` is plain `i // group_size`
and the file is published with `desc_act: false`, which every reader, vLLM included, runs
as it is. The layout is checked on the written `g_idx` before that flag is written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..errors import EngineError
from ..shapes import needs_slow_cpu_kernel
from ..sizes import model_tensors, safetensors_bytes
from .autoround import AutoRoundSpec, autoround_description, run_autoround
from .clients import TRANSFORMERS, VLLM_CPU, VLLM_CPU_4BIT, Support
from .gptqmodel import EngineResult, GPTQModelFormat, QuantizedSpec, run_gptqmodel
from .sections import Row
from .weightfolder import publish_configs, written_quantize_config

# gptqmodel's GPTQ solver options, which AutoRound does not take.
GPTQMODEL_ONLY = ("desc_act", "damp_percent", "act_group_aware", "static_groups", "mse", "gptaq", "true_sequential")


class GPTQSpec(QuantizedSpec):
    format: Literal["gptq"]
    bits: Literal[4, 8] = 4
    desc_act: bool = True
    damp_percent: float = Field(0.1, gt=0, lt=1)
    sym: bool = True
    true_sequential: bool = True
    act_group_aware: bool = Field(
        False,
        description="gptqmodel's group-aware reordering (GAR): act order within "
        "and across groups, written without run-time reordering; needs desc_act: false",
    )
    static_groups: bool = Field(
        True,
        description="act order in the static layout (no run-time reordering); "
        "false writes AutoGPTQ's dynamic layout, which vLLM >= 0.2x refuses",
    )
    mse: float = Field(
        2.4,
        ge=0,
        description="gptqmodel's scale search: shrink each group's range to minimise the error in this norm "
        "(2.4 as in the GPTQ paper's code; bench/recipes.py measured 0.79x/0.73x the KLD of min/max scales "
        "on two texts at the same size and time); 0 keeps min/max scales, the engine's default",
    )
    gptaq: bool = Field(
        False,
        description="GPTAQ (gptqmodel's GPTQ v2 algorithm, alpha 0.25): also corrects the error carried in "
        "from earlier quantized layers; the file layout is unchanged (GPTQ v1)",
    )
    autoround: AutoRoundSpec | None = Field(
        None,
        description="tune with AutoRound instead of gptqmodel's GPTQ solver (formats/autoround.py); same file "
        "layout, written without act order",
    )

    @model_validator(mode="before")
    @classmethod
    def _autoround_alone(cls, data):
        """AutoRound has no act order, damping or scale search: gptqmodel's options are refused with it, not
        ignored, and act order defaults to off so its name and branch say what the file is."""
        if not isinstance(data, dict) or data.get("autoround") is None:
            return data
        given = [key for key in GPTQMODEL_ONLY if key in data and not (key == "desc_act" and data[key] is False)]
        if given:
            raise ValueError(f"{', '.join(given)}: gptqmodel's GPTQ options; remove them or autoround")
        return {**data, "desc_act": False, "mse": 0.0, "true_sequential": False}

    @model_validator(mode="after")
    def _gar_alone(self) -> GPTQSpec:
        if self.act_group_aware and self.desc_act:
            raise ValueError("act_group_aware replaces desc_act; set desc_act: false with it")
        return self

    @property
    def dynamic_act_order(self) -> bool:
        """Groups in activation order: a g_idx permutation readers must apply (and vLLM refuses)."""
        return self.desc_act and self.group_size != -1 and not self.static_groups

    @property
    def uses_static_groups(self) -> bool:
        """What gptqmodel is asked for: static groups only matter (and are only set) for act order with groups."""
        return self.desc_act and self.group_size != -1 and self.static_groups

    @property
    def layout_desc_act(self) -> bool:
        """`desc_act` as readers must take it: true only for the dynamic layout (-1: one group, no reordering)."""
        return self.dynamic_act_order


def autogptq_config(spec: GPTQSpec) -> dict:
    """The key set AutoGPTQ-made repos publish in quantize_config.json (TheBloke's GPTQ repos), in their order."""
    return {
        "bits": spec.bits,
        "group_size": spec.group_size,
        "damp_percent": spec.damp_percent,
        "desc_act": spec.layout_desc_act,
        "static_groups": spec.uses_static_groups,
        "sym": spec.sym,
        "true_sequential": spec.true_sequential,
        "model_name_or_path": None,
        "model_file_base_name": "model",
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
    }


def predict_bytes(config: dict, spec: GPTQSpec) -> int:
    """qweight, qzeros, fp16 scales and g_idx per linear; everything else in fp16."""
    entries = []
    for t in model_tensors(config):
        if not t.is_linear:
            entries.append((t.name, "F16", t.shape, t.numel * 2))
            continue
        out_f, in_f = t.shape
        groups = 1 if spec.group_size == -1 else math.ceil(in_f / spec.group_size)
        stem = t.name.removesuffix(".weight")
        entries += [
            (f"{stem}.qweight", "I32", (in_f * spec.bits // 32, out_f), in_f * spec.bits // 32 * out_f * 4),
            (f"{stem}.qzeros", "I32", (groups, out_f * spec.bits // 32), groups * out_f * spec.bits // 32 * 4),
            (f"{stem}.scales", "F16", (groups, out_f), groups * out_f * 2),
            (f"{stem}.g_idx", "I32", (in_f,), in_f * 4),
        ]
    return safetensors_bytes(entries)


def quantize_gptq(
    base_path: Path, spec: GPTQSpec, input_ids: np.ndarray, out: Path, dtype: str | None = None
) -> EngineResult:
    if spec.autoround:
        result = run_autoround(base_path, spec.autoround, spec.bits, spec.group_size, spec.sym, "gptq", input_ids, out)
    else:
        result = _solve(base_path, spec, input_ids, out, dtype)
    if not spec.dynamic_act_order:
        check_plain_g_idx(out, spec.group_size)
    config = autogptq_config(spec)
    publish_configs(out, config, {"quantize_config.json": config})
    return result


def _solve(base_path: Path, spec: GPTQSpec, input_ids: np.ndarray, out: Path, dtype: str | None) -> EngineResult:
    """gptqmodel's GPTQ solver, and a check that it wrote the v1 checkpoint asked for."""
    result = run_gptqmodel(
        base_path,
        {
            "bits": spec.bits,
            "group_size": spec.group_size,
            "desc_act": spec.desc_act,
            "act_group_aware": spec.act_group_aware,  # gptqmodel's GAR; off unless asked, so desc_act means AutoGPTQ's
            "damp_percent": spec.damp_percent,
            "sym": spec.sym,
            "true_sequential": spec.true_sequential,
            "static_groups": spec.uses_static_groups,
            "mse": spec.mse,
            **({"gptaq": {"alpha": 0.25}} if spec.gptaq else {}),
        },
        input_ids,
        out,
        dtype,
    )
    written = written_quantize_config(out)
    if written.get("checkpoint_format") != "gptq" or written.get("bits") != spec.bits:
        raise EngineError(
            f"gptqmodel wrote {written.get('checkpoint_format')} {written.get('bits')}-bit, "
            f"expected gptq v1 {spec.bits}-bit"
        )
    return result


def check_plain_g_idx(folder: Path, group_size: int) -> None:
    """Every `g_idx` is `i // group_size`: the layout `desc_act: false` promises, which vLLM runs without
    reading `g_idx` at all. A permuted one published under that flag would load and compute wrong outputs."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "np") as handle:
            for name in handle.keys():
                if name.endswith(".g_idx"):
                    g_idx = handle.get_tensor(name)
                    plain = np.arange(g_idx.size) // (g_idx.size if group_size == -1 else group_size)
                    if not np.array_equal(g_idx, plain):
                        raise EngineError(
                            f"{file.name}: {name} is reordered; the static act-order layout needs plain groups",
                            fix="report this gptqmodel version, or set static_groups: false for the dynamic layout",
                        )


def short_name(bits: int, group_size: int, desc_act: bool) -> str:
    name = f"gptq-{bits}bit" + ("" if group_size == -1 else f"-{group_size}g")
    return name if desc_act else f"{name}-noact"


def branch(bits: int, group_size: int, desc_act: bool) -> str:
    """TheBloke's branch names (`gptq-4bit-32g-actorder_True`), so download commands carry over."""
    return f"gptq-{bits}bit-{group_size}g-actorder_{desc_act}"


def act_order_cell(spec: GPTQSpec) -> str:
    if spec.act_group_aware:
        return "GAR"
    if not spec.desc_act:
        return "False"
    return "True (dynamic)" if spec.dynamic_act_order else "True (static)"


def _grouping(spec: GPTQSpec) -> str:
    return {
        -1: "No grouping: the smallest file at this bit width, the least accurate",
        32: "Group size 32: the most accurate at this bit width, the largest file",
        64: "Group size 64: between 32g and 128g in accuracy and size",
        128: "Group size 128: the usual balance of accuracy and size",
    }.get(spec.group_size, f"Group size {spec.group_size}")


def _description(spec: GPTQSpec) -> str:
    text = _grouping(spec)
    if spec.autoround:
        text += "; " + autoround_description(spec.autoround)
    elif spec.dynamic_act_order:
        text += "; act order, dynamic layout (AutoGPTQ's; vLLM 0.32 refuses it)"
    elif spec.desc_act and spec.group_size != -1:
        text += "; act order, static groups (no run-time reordering; `desc_act: false` in the config)"
    elif spec.desc_act:
        text += "; act order"
    elif spec.act_group_aware:
        text += "; group-aware act order (GAR, no run-time reordering)"
    if spec.mse:
        text += f"; scales by error search (norm {spec.mse:g})"
    if spec.gptaq:
        text += "; GPTAQ"
    if spec.bits == 8:
        text += "; 8-bit is close to the unquantized model at about twice the 4-bit size"
    return text + "."


class GPTQ(GPTQModelFormat):
    name = "gptq"
    title = "GPTQ"
    spec_type = GPTQSpec
    family_line = "GPTQ models for GPU inference, with several parameter choices"
    family_rank = 1
    plot_marker = "o"
    config_files = "`quantize_config.json` and `config.json` carry the same parameters (`checkpoint_format: gptq`)."

    def names(self, spec: GPTQSpec) -> tuple[str, str]:
        if spec.autoround:  # apart from gptqmodel's files of the same bits and groups
            name = short_name(spec.bits, spec.group_size, True) + "-autoround"
            return name, name
        return (
            short_name(spec.bits, spec.group_size, spec.desc_act),
            branch(spec.bits, spec.group_size, spec.desc_act),
        )

    def predict_bytes(self, planner, spec: GPTQSpec) -> int:
        return predict_bytes(planner.config, spec)

    def memory_lever(self, spec: GPTQSpec) -> str:
        return ", set gptaq: false" if spec.gptaq else ""

    def extra_acts(self, planner, spec: GPTQSpec, tokens: int) -> int:
        """GPTAQ keeps every calibration token's unquantized input to each of a layer's linears (attention,
        o_proj, gate/up, down) while the layer is solved: 4 bytes per value gives 0.86 GB for SmolLM2 on
        128 x 512 tokens, measured +0.96 GB (bench/README.md section 8). At 7B on 128 x 4096 tokens it is
        56 GB, so GPTAQ suits short calibration sets there and is not a default."""
        if not spec.gptaq:
            return 0
        c = planner.config
        return 4 * tokens * (3 * c["hidden_size"] + c["intermediate_size"])

    def support(self, spec: GPTQSpec) -> list[Support]:
        rows = [
            Support(
                "transformers",
                True,
                TRANSFORMERS,
                "CPU: 4-bit without groups needs `GPTQConfig(bits=4, backend='torch')`"
                if spec.bits == 4 and spec.group_size == -1
                else "",
            )
        ]
        if spec.dynamic_act_order:
            vllm = Support(
                "vLLM",
                False,
                VLLM_CPU,
                "refuses desc_act with groups (dynamic act order) on every "
                "platform; the static layout (static_groups: true) loads",
                refusal="GPTQ group activation ordering (desc_act=True) is no longer supported",
            )
        elif spec.bits != 4:
            vllm = Support(
                "vLLM",
                False,
                VLLM_CPU,
                "the CPU build runs 4-bit GPTQ only (Marlin 8-bit needs a GPU, untested here)",
                refusal="does not support weight_bits = uint8b128",
            )
        elif not spec.sym:
            vllm = Support("vLLM", None, VLLM_CPU, "asymmetric GPTQ is not in vLLM's GPTQ kernels' list; untested")
        else:
            vllm = Support("vLLM", True, VLLM_CPU, f"{VLLM_CPU_4BIT}; GPU (Marlin) untested here")
        return rows + [
            vllm,
            Support(
                "ExLlama", None, "untested", "reads 4-bit GPTQ v1 per its docs" if spec.bits == 4 else "4-bit only"
            ),
            Support("TGI", None, "untested", ""),
        ]

    def quantize(
        self, base_path: Path, spec: GPTQSpec, input_ids: np.ndarray, out: Path, dtype: str | None = None
    ) -> EngineResult:
        return quantize_gptq(base_path, spec, input_ids, out, dtype)

    def load_kwargs(self, spec: GPTQSpec, base_config: dict, device: str) -> dict:
        """On a CPU, 4-bit GPTQ layouts the fast int4 kernel refuses load with gptqmodel's torch backend."""
        if device == "cpu" and needs_slow_cpu_kernel(base_config, spec.bits, spec.group_size):
            from transformers import GPTQConfig

            return {"quantization_config": GPTQConfig(bits=spec.bits, backend="torch")}
        return {}

    def card_row(self, r: Row) -> tuple[str, str, str]:
        spec = r.variant.spec
        damp = "-" if spec.autoround else f"{spec.damp_percent:g}"
        return act_order_cell(spec), damp, _description(spec)
