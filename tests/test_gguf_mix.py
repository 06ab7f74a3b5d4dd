"""GGUF size-budget mixes: the budget is met, plan predicts it, llama.cpp writes the chosen types, and a larger
budget buys measurably less loss."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from conftest import published_means, run_cli, write_config

from quantize.formats.gguf.mix import Option, TensorSensitivity, choose
from quantize.outputs import weight_bytes

BUDGETS = {"gguf-i1-mix-3.5bpw": 3.5, "gguf-i1-mix-5.5bpw": 5.5}


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    """Two budgets and i1-Q4_K_M of the tiny model, with checks; gates judge nothing (random weights)."""
    work = tmp_path_factory.mktemp("mix")
    variants = [
        {"format": "gguf", "quant_type": "Q4_K_M"},
        {"format": "gguf", "target_bpw": 3.5},
        {"format": "gguf", "target_bpw": 5.5},
    ]
    gates = {"gguf": {"smoke": "report"}}
    config = write_config(work, tiny_model, variants, gates=gates)
    out = work / "out"
    with pytest.MonkeyPatch.context() as patch:  # its own cache: the measurement is counted exactly
        patch.setenv("QUANTIZE_CACHE", str(work / "cache"))
        proc = run_cli("build", "--config", str(config), "--out", str(out), "--all", cwd=work, check=True)
    reports = {
        p.name: json.loads((p / "report.json").read_text()) for p in out.iterdir() if (p / "report.json").is_file()
    }
    return {"config": config, "out": out, "reports": reports, "stderr": proc.stderr, "work": work}


def test_budget_is_met_and_predicted(built):
    for name, bpw in BUDGETS.items():
        report = built["reports"][name]
        budget = report["mix"]["budget_bytes"]
        size = weight_bytes(report)  # the GGUF, not the matrix and layout published beside it
        assert size <= budget < report["total_bytes"], name
        # the walk spends the budget to within a few small tensors' upgrades; plan predicts the budget
        assert size / report["predicted_bytes"] > 0.99, name
        assert report["bits_per_weight"] == pytest.approx(bpw, abs=0.05)


def test_file_holds_the_chosen_types_and_loads(built):
    from gguf import GGUFReader, LlamaFileType

    from quantize.formats.gguf.llamacpp import gguf_logits, load_gguf

    for name in BUDGETS:
        folder = built["out"] / name
        path = folder / f"tiny-mistral.i1-MIX-{BUDGETS[name]:g}BPW.gguf"
        published = {p.name for p in folder.iterdir() if p.suffix in (".gguf", ".txt")}
        assert published == {path.name, "tiny-mistral.imatrix.gguf", f"{path.stem}.tensor-types.txt"}
        mix = built["reports"][name]["mix"]
        written = {t.name: t.tensor_type.name for t in GGUFReader(path).tensors if len(t.shape) > 1}
        assert written == mix["tensor_types"]
        assert sum(mix["type_counts"].values()) == len(written) and len(mix["type_counts"]) >= 2
        assert np.isfinite(gguf_logits(load_gguf(path, n_ctx=64), [5, 6, 7, 8])).all()
        # what it was asked for and what it chose, in the file itself (beside llama.cpp's imatrix keys)
        keys = {k: f.contents() for k, f in GGUFReader(path).fields.items() if k.startswith("quantize.")}
        assert keys["quantize.mix.budget_bytes"] == str(mix["budget_bytes"])
        assert keys["quantize.mix.type_counts"] == ", ".join(f"{n} {t}" for t, n in mix["type_counts"].items())
        assert keys["quantize.mix.candidates"] == ",".join(mix["candidates"])
        assert keys["quantize.imatrix.chunks_count"] == built["reports"][name]["inputs"]["calibration"]["samples"]
        # no stock file type describes a mix: llama.cpp's "guessed" flag on its most common type, not Q4_K_M
        most = max(mix["type_counts"].values())
        dominant = min(t for t, n in mix["type_counts"].items() if n == most)  # a tie goes to the first name
        stock = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}.get(dominant, dominant)
        want = int(LlamaFileType[f"MOSTLY_{stock}"]) | int(LlamaFileType.GUESSED)
        assert GGUFReader(path).fields["general.file_type"].contents() == want != int(LlamaFileType.MOSTLY_Q4_K_M)


def test_the_published_layout_and_imatrix_remake_the_mix_in_llama_cpp(built, tmp_path):
    """What a user with stock llama.cpp does: `--tensor-type-file` lines handed to llama.cpp as they are
    (PATTERN=TYPE, its regexes), the published matrix as in_sum2 / counts, Q4_K_M as the base type, from the
    F16: every tensor byte for byte as published. Control: without the layout, the bytes differ."""
    import gguf
    import llama_cpp

    from quantize.formats.gguf.quantize import quantize_file

    folder = built["out"] / "gguf-i1-mix-3.5bpw"
    lines = (folder / "tiny-mistral.i1-MIX-3.5BPW.tensor-types.txt").read_text().splitlines()
    overrides = (llama_cpp.llama_model_tensor_override * (len(lines) + 1))()
    keep = []
    for i, line in enumerate(lines):
        pattern, qtype = line.rsplit("=", 1)
        keep.append(pattern.encode())
        overrides[i].pattern = keep[-1]
        overrides[i].type = int(gguf.GGMLQuantizationType[qtype])
    overrides[len(lines)].pattern = None
    means = published_means(folder / "tiny-mistral.imatrix.gguf")
    (f16,) = (built["work"] / "cache" / "gguf").glob("*/tiny-mistral.F16.gguf")

    def data(path):
        return {t.name: (t.tensor_type.name, t.data.tobytes()) for t in gguf.GGUFReader(path).tensors}

    quantize_file(f16, tmp_path / "remade.gguf", "Q4_K_M", means, overrides=overrides)
    published = data(folder / "tiny-mistral.i1-MIX-3.5BPW.gguf")
    assert data(tmp_path / "remade.gguf") == published
    quantize_file(f16, tmp_path / "plain.gguf", "Q4_K_M", means)
    assert data(tmp_path / "plain.gguf") != published
    assert len(keep) == len(lines)  # the patterns' bytes stayed alive for the C side


def test_a_larger_budget_loses_less(built):
    small, large = (built["reports"][n] for n in BUDGETS)
    assert large["mix"]["predicted_kld"] < small["mix"]["predicted_kld"]
    assert large["checks"]["mean_kld"] < small["checks"]["mean_kld"]


def test_sensitivities_are_measured_once(built):
    assert built["stderr"].count("mix: measuring every tensor") == 1
    assert "mix: sensitivities from the cache" in built["stderr"]
    assert len(list((built["work"] / "cache" / "mix").glob("*.json"))) == 1


def test_every_tensor_class_is_probed(built):
    """Each class, quantized alone, moved the output: a probe that left the file F16 would score 0 (as one did
    when llama.cpp ignored the overrides under an F16 file type)."""
    scales = built["reports"]["gguf-i1-mix-5.5bpw"]["mix"]["kld_per_error"]
    layer = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}
    assert set(scales) == {f"{c}.weight" for c in layer | {"token_embd", "output"}}
    assert all(v > 0 for v in scales.values()), scales


def test_card_names_the_mix(built):
    run_cli("card", "--config", str(built["config"]), "--out", str(built["out"]), check=True)
    card = (built["out"] / "cards" / "tester__tiny-mistral-GGUF" / "README.md").read_text()
    row = next(line for line in card.splitlines() if "i1-MIX-5.5BPW" in line)
    assert "per-tensor mix to" in row and "types chosen per tensor by measured sensitivity" in row


def test_walk_matches_brute_force():
    """The hull walk against every assignment of small problems: never over budget, never worse than the best
    greedy fill can be by more than one tensor's step (the walk is optimal on the hull's continuous relaxation)."""
    rng = np.random.default_rng(0)
    for trial in range(30):
        tensors = []
        for t in range(4):
            sizes = np.sort(rng.choice(np.arange(10, 100), size=3, replace=False))
            errors = np.sort(rng.random(3))[::-1]
            tensors.append(
                TensorSensitivity(
                    f"t{t}",
                    (1, 1),
                    tuple(Option(f"q{k}", int(s), float(e)) for k, (s, e) in enumerate(zip(sizes, errors))),
                )
            )
        low = sum(t.options[0].nbytes for t in tensors)
        high = sum(t.options[-1].nbytes for t in tensors)
        budget = int(rng.integers(low, high + 1))
        picked = choose(tensors, budget)
        spent = sum(next(o.nbytes for o in t.options if o.qtype == picked[t.name]) for t in tensors)
        got = sum(next(o.error for o in t.options if o.qtype == picked[t.name]) for t in tensors)
        best = min(
            sum(o.error for o in combo)
            for combo in itertools.product(*(t.options for t in tensors))
            if sum(o.nbytes for o in combo) <= budget
        )
        assert spent <= budget, trial
        worst_step = max(t.options[0].error - t.options[-1].error for t in tensors)
        assert best <= got <= best + worst_step, trial


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"target_bpw": 2.1}, "is below the smallest mix"),
        ({"max_size_gb": 1.0}, "fits every tensor at Q8_0"),
        ({"quant_type": "Q4_K_M", "target_bpw": 4.5}, "gives quant_type and target_bpw"),
        ({"target_bpw": 4.5, "imatrix": False}, "a size-budget mix cannot be made without an importance matrix"),
        ({"target_bpw": 4.5, "mix_types": ["Q4_K", "Q4_X"]}, "Q4_X is not a mix type"),
        ({"quant_type": "Q4_K_M", "mix_types": ["Q4_K"]}, "mix_types applies to a size budget only"),
    ],
)
def test_bad_budgets_are_refused_before_any_work(tmp_path, tiny_model, entry, words):
    config = write_config(tmp_path, tiny_model, [{"format": "gguf", **entry}])
    proc = run_cli("build", "--config", str(config), "--out", str(tmp_path / "out"), "--all", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert words in line and "fix:" in line, line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.gguf"))
