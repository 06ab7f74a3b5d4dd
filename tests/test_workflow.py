"""The example CI workflow stays hardened: zizmor finds nothing above informational, actions stay pinned.

The workflow runs with hub credentials on GPU runners, so an input or matrix value expanded
into a `run:` script, a mutable action tag or a write-capable token is a way in. zizmor is
run offline (no GitHub API), on the regular persona, with no config and no ignore comments.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "quantize.yml"


def _zizmor() -> str:
    found = shutil.which("zizmor", path=str(Path(sys.executable).parent)) or shutil.which("zizmor")
    if found is None:
        pytest.skip("zizmor is not installed; fix: pip install -e '.[test]'")
    return found


def test_zizmor_finds_nothing_above_informational():
    proc = subprocess.run(
        [_zizmor(), "--offline", "--no-config", "--no-ignores", "--format", "json", str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 or proc.returncode >= 10, proc.stderr  # 10+: findings; 1-9: zizmor itself failed
    findings = [f for f in json.loads(proc.stdout) if f["determinations"]["severity"] != "Informational"]
    assert not findings, "\n".join(
        f"{WORKFLOW.name}:{f['locations'][0]['concrete']['location']['start_point']['row'] + 1}: {f['ident']} "
        f"({f['determinations']['severity']}): {f['desc']}"
        for f in findings
    )


def test_actions_are_pinned_with_their_version_and_the_pipeline_is_intact():
    text = WORKFLOW.read_text()
    uses = re.findall(r"uses:\s*(\S+)(.*)", text)
    assert uses and all(
        re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref) and re.fullmatch(r"\s*# v\d+\.\d+\.\d+", tail)
        for ref, tail in uses
    ), uses
    jobs = yaml.safe_load(text)["jobs"]
    assert jobs["build"]["needs"] == "plan" and jobs["publish"]["needs"] == "build"
    assert any("publish --all --only-passed" in step.get("run", "") for step in jobs["publish"]["steps"])
