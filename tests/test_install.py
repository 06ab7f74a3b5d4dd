"""A wheel (non-editable) install carries its recipes, eval suites and examples, and works from any folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_install_lists_and_plans_the_packaged_example_from_another_folder(tmp_path):
    src = tmp_path / "src"  # a copy: setuptools leaves build/ in the tree it builds
    shutil.copytree(ROOT / "quantize", src / "quantize", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
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
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("quantize-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)
    for packaged in (
        "quantize/data/calibration/wiki-summaries.yaml",
        "quantize/data/eval/smollm2-gates.yaml",
        "quantize/data/eval/smoke.yaml",
        "quantize/data/examples/smollm2.yaml",
    ):
        assert packaged in names, packaged
    # Only the config file, alone in an unrelated folder: recipes must come from the installed package.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = shutil.copy(site / "quantize" / "data" / "examples" / "smollm2.yaml", elsewhere / "mine.yaml")
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import quantize; print(quantize.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(site)), where
    for command in ("list", "plan"):
        proc = subprocess.run(
            [sys.executable, "-m", "quantize", command, "--config", str(config)],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "gptq-4bit-32g" in proc.stdout and "gguf-q4_k_m" in proc.stdout, proc.stdout
    removed = elsewhere / "broken.yaml"
    removed.write_text(config.read_text().replace("calibration: wiki-summaries", "calibration: nosuch"))
    proc = subprocess.run(
        [sys.executable, "-m", "quantize", "list", "--config", str(removed)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "no recipe named 'nosuch'" in proc.stderr and "wiki-summaries" in proc.stderr
