"""A wheel (non-editable) install, in a venv of its own, holds every module and works from any folder.

The fresh venv has no editable install of this project, so no import finder can supply a
subpackage the wheel lacks (the old test ran the dev venv's Python, whose editable finder
hid a wheel without formats/, checks/, hub/ and card/). Its dependencies come from the dev
venv's site-packages through a plain path line in a .pth file: a path line adds the folder
to sys.path but does not run the .pth files inside it, so the editable finder stays off.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_GATES, write_config

PLUGIN = ROOT / "tests" / "plugin"


def _wheel(src: Path, dist: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    return max(dist.glob("*.whl"), key=lambda p: p.stat().st_mtime)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """quantize's wheel and the out-of-tree toy format's, each built from a copy (setuptools writes build/)."""
    tmp = tmp_path_factory.mktemp("wheels")
    src = tmp / "src"
    shutil.copytree(ROOT / "quantize", src / "quantize", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    plugin = tmp / "plugin"
    shutil.copytree(PLUGIN, plugin, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    return {"quantize": _wheel(src, tmp / "dist"), "toy": _wheel(plugin, tmp / "dist-toy")}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, wheels) -> Path:
    """A new venv holding the two wheels (pip-installed, not editable); its Python's path."""
    venv = tmp_path_factory.mktemp("venv") / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # dependencies only: a path line, so the dev venv's own .pth files (its editable finder) are not run
    (site / "zz-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index"]
        + [str(w) for w in wheels.values()],
        check=True,
        capture_output=True,
    )
    return python


def _run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_wheel_holds_every_module_and_data_file(wheels):
    with zipfile.ZipFile(wheels["quantize"]) as archive:
        names = set(archive.namelist())
    tree = {str(p.relative_to(ROOT)) for p in (ROOT / "quantize").rglob("*.py")}
    assert tree - names == set()
    assert {"quantize/formats/gguf/__init__.py", "quantize/checks/checker.py", "quantize/hub/publish.py"} <= names
    for packaged in (
        "quantize/data/calibration/wiki-summaries.yaml",
        "quantize/data/eval/smollm2-gates.yaml",
        "quantize/data/eval/smoke.yaml",
        "quantize/data/examples/smollm2.yaml",
    ):
        assert packaged in names, packaged


def test_the_fresh_venv_imports_the_installed_wheel_not_this_tree(fresh, tmp_path):
    where = _ok(_run(fresh, "-c", "import quantize.formats.gguf as g; print(g.__file__)", cwd=tmp_path))
    assert where.startswith(str(fresh.parent.parent)) and "site-packages" in where, where
    assert not where.startswith(str(ROOT / "quantize"))


def test_a_wheel_without_its_subpackages_fails_in_the_fresh_venv(fresh, tmp_path):
    """Negative control: with formats/ gone from the installed package, the fresh venv fails to list."""
    broken = tmp_path / "broken"
    shutil.copytree(
        Path(_ok(_run(fresh, "-c", "import quantize; print(quantize.__file__)", cwd=tmp_path))).parent,
        broken / "quantize",
    )
    shutil.rmtree(broken / "quantize" / "formats")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(broken)}
    config = broken / "quantize" / "data" / "examples" / "smollm2.yaml"
    proc = subprocess.run(
        [str(fresh), "-m", "quantize", "list", "--config", str(config)], cwd=tmp_path, env=env, capture_output=True
    )
    assert proc.returncode != 0 and b"formats" in proc.stderr


def test_list_and_plan_the_packaged_example_from_an_unrelated_folder(fresh, tmp_path):
    """Only the config file, alone in another folder: recipes and eval files come from the installed package."""
    site = Path(_ok(_run(fresh, "-c", "import quantize; print(quantize.__file__)", cwd=tmp_path))).parent
    config = shutil.copy(site / "data" / "examples" / "smollm2.yaml", tmp_path / "mine.yaml")
    for command in ("list", "plan"):
        out = _ok(_run(fresh, "-m", "quantize", command, "--config", str(config), cwd=tmp_path))
        assert "gptq-4bit-32g" in out and "gguf-q4_k_m" in out, out
    broken = tmp_path / "broken.yaml"
    broken.write_text(Path(config).read_text().replace("calibration: wiki-summaries", "calibration: nosuch"))
    proc = _run(fresh, "-m", "quantize", "list", "--config", str(broken), cwd=tmp_path)
    assert proc.returncode == 2 and "no recipe named 'nosuch'" in proc.stderr and "wiki-summaries" in proc.stderr


def _toy_project(folder: Path, tiny_model: Path) -> Path:
    gates = {**TINY_GATES, "toy": {"max_ppl_ratio": 1.05, "max_mean_kld": 0.01, "smoke": "report"}}
    return write_config(folder, tiny_model, [{"format": "toy"}, {"format": "gguf", "quant_type": "Q8_0"}], gates)


def test_an_out_of_tree_format_is_listed_planned_and_built(fresh, tmp_path, tiny_model):
    """The toy package (tests/plugin) registers `toy` by entry point; nothing in quantize/ names it."""
    assert "toy" not in "".join(p.read_text() for p in (ROOT / "quantize").rglob("*.py"))
    config = _toy_project(tmp_path / "project", tiny_model)
    listed = _ok(_run(fresh, "-m", "quantize", "list", "--config", str(config), cwd=tmp_path))
    toy_line = next(line for line in listed.splitlines() if line.startswith("toy-fp16"))
    assert toy_line.split()[:4] == ["toy-fp16", "toy-fp16", "(+main)", "toy"], listed
    assert "calibration=" not in toy_line  # a data-free format: no calibration recipe by default
    plan = json.loads(_ok(_run(fresh, "-m", "quantize", "plan", "--config", str(config), "--json", cwd=tmp_path)))
    toy = next(r for r in plan if r["format"] == "toy")
    assert toy["clients"] == ["transformers"] and set(toy["stages"]) == {"cast", "check"} and toy["predicted_bytes"] > 0
    out = tmp_path / "out"
    args = ("--config", str(config), "--variant", "toy-fp16", "--out", str(out))
    _ok(_run(fresh, "-m", "quantize", "build", *args, cwd=tmp_path))
    report = json.loads((out / "toy-fp16" / "report.json").read_text())
    assert report["status"] == "passed" and report["variant"]["format"] == "toy"
    assert report["checks"]["mean_kld"] < 0.01  # float16 of a float32 model: nearly lossless
    assert set(report["versions"]) >= {"quantize", "torch", "transformers"}
    _ok(_run(fresh, "-m", "quantize", "card", "--config", str(config), "--out", str(out), cwd=tmp_path))
    card = next((out / "cards").glob("*Toy*/README.md")).read_text()
    assert "Toy files of" in card and "toy-fp16" in card and "## Compatibility" in card


def test_a_broken_format_package_is_one_line_naming_it(fresh, tmp_path, tiny_model):
    """An entry point that cannot be imported fails every command with one line naming the package, exit 2."""
    broken = tmp_path / "site"
    (broken / "broken_fmt-0.1.dist-info").mkdir(parents=True)
    (broken / "broken_fmt-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: broken-fmt\nVersion: 0.1\n"
    )
    (broken / "broken_fmt-0.1.dist-info" / "entry_points.txt").write_text(
        "[quantize.formats]\nbroken = broken_fmt:Broken\n"
    )
    (broken / "broken_fmt.py").write_text("raise ImportError('needs an engine that is not installed')\n")
    config = _toy_project(tmp_path / "project", tiny_model)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(broken)}
    proc = subprocess.run(
        [str(fresh), "-m", "quantize", "list", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "broken-fmt" in proc.stderr and "needs an engine" in proc.stderr


def test_the_toy_config_is_refused_without_the_plugin(tmp_path, tiny_model):
    """Negative control: the dev venv has no toy package, so the same config names the unknown format."""
    config = _toy_project(tmp_path / "project", tiny_model)
    proc = subprocess.run(
        [sys.executable, "-m", "quantize", "list", "--config", str(config)], capture_output=True, text=True
    )
    doc = yaml.safe_load(config.read_text())
    assert doc["variants"][0]["format"] == "toy"
    assert proc.returncode == 2 and "unknown format 'toy'" in proc.stderr


def test_the_offline_default_builds_and_checks_a_gguf_from_the_wheel(fresh, tmp_path):
    """The packaged SmolLM2 example, its config copied alone to an unrelated folder, built as Q8_0 and checked
    (about a minute on 2 cores, wheels included)."""
    site = Path(_ok(_run(fresh, "-c", "import quantize; print(quantize.__file__)", cwd=tmp_path))).parent
    config = shutil.copy(site / "data" / "examples" / "smollm2.yaml", tmp_path / "smollm2.yaml")
    args = ("--config", str(config), "--variant", "gguf-q8_0", "--out", str(tmp_path / "out"))
    _ok(_run(fresh, "-m", "quantize", "build", *args, cwd=tmp_path))
    report = json.loads((tmp_path / "out" / "gguf-q8_0" / "report.json").read_text())
    assert report["status"] == "passed", report["checks"]
    assert report["checks"]["mean_kld"] < 0.05 and report["checks"]["ppl"] > 1
    assert report["versions"]["llama-cpp-python"] and report["versions"]["gguf"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "smollm2.yaml"]  # nothing written beside them
