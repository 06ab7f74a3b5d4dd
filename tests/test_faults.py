"""Faults survived: a publish killed anywhere converges on one rerun, shards publish at once, hub faults are retried
or refused in one line, damaged outputs are named, and `--all` runs on a partly built out folder do what they can.

The trials live in tests/faults.py, shared with bench/faults.py (which prints the table README states). The
default run takes a few points of each; `pytest -m faults` runs the full counts (20 kill points per remote and
transport, 20 shard runs).
"""

from __future__ import annotations

import shutil

import faults
import pytest
from conftest import cards_for, run_cli
from faults import DEFAULT, REPO_GPTQ, Family


@pytest.fixture(scope="module")
def old(tmp_path_factory, tiny_model) -> Family:
    """The same family at another calibration size: other bytes in every calibrated file, an older version."""
    return faults.build_family(tmp_path_factory.mktemp("old"), tiny_model, samples=6)


def survived(rows: list[faults.Outcome]) -> None:
    assert rows and all(r.trials and not r.lost for r in rows), (
        faults.table(rows) + "\n" + "\n".join(f"{r.fault}: {n}" for r in rows for n in r.notes)
    )


@pytest.mark.parametrize(
    "kind,points",
    [
        ("git", 1),  # one kill mid-run of the process alone: its write lands while the rerun runs
        ("http", 1),
        pytest.param("git", 20, marks=pytest.mark.faults),
        pytest.param("http", 20, marks=pytest.mark.faults),
    ],
)
def test_a_publish_killed_anywhere_converges_on_one_rerun(family, old, kind, points, tmp_path):
    seconds = faults.publish_seconds(family, kind, tmp_path / "timing")
    rows = faults.kill_trials(family, old, kind, tmp_path, points, seconds)
    survived(rows)
    assert sum(r.trials for r in rows) == 2 * points


@pytest.mark.parametrize(
    "kind,runs",
    [
        ("git", 1),  # one run of three publishes at once
        ("http", 1),
        pytest.param("git", 20, marks=pytest.mark.faults),
        pytest.param("http", 20, marks=pytest.mark.faults),
    ],
)
def test_shards_publishing_at_once_converge(family, kind, runs, tmp_path):
    survived([faults.concurrent_trials(family, kind, tmp_path, runs)])


# One fault of each kind of answer by default (dropped, an error after the commit landed, a wait refused, a silent
# hub, a lie); `-m faults` runs every row of the table.
DEFAULT_FAULTS = [
    "connection dropped mid-LFS upload",
    "500 on the commit, after it landed",
    "429 with Retry-After: 3600 on the commit",
    "commit answered after the client's timeout (it landed)",
    "preupload lies: weights already there",
]


@pytest.mark.parametrize("every", [False, pytest.param(True, marks=pytest.mark.faults)])
def test_hub_faults_are_retried_or_refused_in_one_line(family, old, tmp_path, every):
    chosen = [f for f in faults.hub_faults() if every or f.name in DEFAULT_FAULTS]
    assert len(chosen) == (len(faults.hub_faults()) if every else len(DEFAULT_FAULTS))
    rows = faults.hub_fault_trials(family, old, tmp_path, chosen)
    survived(rows)
    notes = {r.fault: r.notes for r in rows}
    assert "asks to wait 3600 s" in notes["http: 429 with Retry-After: 3600 on the commit"][0]
    lie = notes["http: preupload lies: weights already there"][0]
    assert "after upload, model.safetensors has sha256" in lie and "put back to its files before" in lie


def test_damaged_outputs_are_named_and_nothing_is_touched(family, tmp_path):
    survived(faults.damaged_trials(family, tmp_path))


def test_the_reader_check_sees_a_mixed_branch(family, old, tmp_path):
    """Negative control of the trials' judge: one file of the old version on the new branch is a mixed branch."""
    with faults.remote("http", tmp_path) as target:
        assert faults.run_publish(family, target).returncode == 0
        assert faults.mixed(target, family, old) == [] and faults.differs_from(target, family) == []
        stale = (old.out / DEFAULT / "model.safetensors").read_bytes()
        target.hub.write(REPO_GPTQ, DEFAULT, {"model.safetensors": stale})
        assert faults.mixed(target, family, old) == [f"{REPO_GPTQ}@{DEFAULT}: 10 files that are not one version's"]
        assert faults.differs_from(target, family) == [f"{REPO_GPTQ}@{DEFAULT}"]


def partial(family: Family, tmp_path, *missing: str):
    out = tmp_path / "out"
    shutil.copytree(family.out, out)
    for branch in missing:
        shutil.rmtree(out / branch)
    return out, ["--config", str(family.config), "--out", str(out)]


def test_check_all_on_a_partly_built_out_checks_what_is_there(family, tmp_path):
    out, common = partial(family, tmp_path, "gptq-8bit-32g-actorder_True", "gguf-i1-q4_k_m")
    proc = run_cli("check", "--all", *common)
    assert proc.returncode == 0, proc.stderr
    assert "skipped (not built in" in proc.stdout and "gptq-8bit-32g, gguf-i1-q4_k_m" in proc.stdout
    assert "gptq-4bit-32g: ppl" in proc.stdout and "gguf-q8_0: ppl" in proc.stdout
    proc = run_cli("check", "--variant", "gptq-8bit-32g", *common)  # named: an error, not a skip
    assert proc.returncode == 1 and "no report.json" in proc.stderr.splitlines()[-1]
    (out / "gguf-q8_0" / "report.json").write_text("{")
    proc = run_cli("check", "--all", *common)  # the damaged one fails the run, the others are still checked
    assert proc.returncode == 1 and "gptq-4bit-32g: ppl" in proc.stdout
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("error: damaged, not checked: ") and str(out / "gguf-q8_0" / "report.json") in last
    assert run_cli("check", "--all", "--config", str(family.config), "--out", str(tmp_path / "none")).returncode == 1


def test_publish_all_on_a_partly_built_out_publishes_what_is_there(family, tmp_path):
    out, common = partial(family, tmp_path, "gptq-8bit-32g-actorder_True", "gguf-i1-q4_k_m")
    mirror = ["--git", str(tmp_path / "mirror")]
    cards_for(family.config, out, *mirror)
    proc = run_cli("publish", "--all", *common, *mirror)
    assert proc.returncode == 0, proc.stderr
    assert "skipped: gptq-8bit-32g, gguf-i1-q4_k_m" in proc.stdout and "gguf-q8_0" in proc.stdout
    assert "skipped gptq-8bit-32g: not built in" in proc.stderr
    proc = run_cli("publish", "--variant", "gguf-i1-q4_k_m", *common, *mirror)
    assert proc.returncode == 1 and "gguf-i1-q4_k_m: not built in" in proc.stderr.splitlines()[-1]
    # Damaged: refused with everything else (nothing sent); with --only-passed the rest go, and the exit says so.
    cards_for(family.config, out, "--git", str(tmp_path / "mirror2"))  # before the damage: `card` refuses it then
    (out / DEFAULT / "report.json").write_text("[]")
    proc = run_cli("publish", "--all", *common, "--git", str(tmp_path / "mirror2"))
    assert proc.returncode == 1 and str(out / DEFAULT / "report.json") in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "mirror2").exists()
    proc = run_cli("publish", "--all", "--only-passed", *common, "--git", str(tmp_path / "mirror2"))
    assert proc.returncode == 1 and "gguf-q8_0" in proc.stdout
    assert proc.stderr.splitlines()[-1].startswith("error: damaged, not published: ")
