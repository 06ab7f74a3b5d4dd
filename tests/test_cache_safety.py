"""Shared caches and full disks: shards computing at once, ENOSPC from any writer, memo-proof publishing.

The disks are real: a small tmpfs mounted in a private mount namespace (`unshare -rm`, which
needs no privileges), so the writers hit a genuine ENOSPC.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT, write_config

VARIANTS = [{"format": "gguf", "quant_type": "Q8_0"}, {"format": "gguf", "quant_type": "Q4_K_M", "imatrix": "tiny"}]


def cli(*args, cache, cwd, prefix=()):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QUANTIZE_CACHE": str(cache)}
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "quantize", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def on_small_disk(mount, size: str):
    """A command prefix that runs the rest with a `size` tmpfs mounted on `mount`, then prints what it left there
    (`left: NAME` lines on stderr: the mount goes away with the namespace)."""
    mount.mkdir(parents=True, exist_ok=True)
    script = (
        f'mount -t tmpfs -o size={size} tmpfs "{mount}" || exit 99; "$@"; rc=$?; '
        f'find "{mount}" -mindepth 1 -printf "left: %P\\n" >&2; exit $rc'
    )
    return ("unshare", "-rm", "sh", "-c", script, "sh")


def left(stderr: str) -> list[str]:
    return [line.removeprefix("left: ") for line in stderr.splitlines() if line.startswith("left: ")]


def leftovers(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".partial" in p.name or ".tmp" in p.name)


def test_two_shards_share_one_cold_cache_and_one_out(tmp_path, tiny_model):
    config = write_config(tmp_path, tiny_model, VARIANTS)
    cache, out = tmp_path / "cache", tmp_path / "out"
    procs = [
        cli("build", "--config", str(config), "--out", str(out), "--variant", name, cache=cache, cwd=tmp_path)
        for name in ("gguf-q8_0", "gguf-i1-q4_k_m")
    ]
    results = [p.communicate(timeout=900) for p in procs]
    for proc, (_stdout, stderr) in zip(procs, results):
        assert proc.returncode == 0, stderr[-3000:]
    stderr = "".join(err for _, err in results)
    # Each shared entry was computed by exactly one of the two processes; the other waited and reused it.
    assert stderr.count("converting tiny-mistral to F16 GGUF") == 1, stderr
    assert stderr.count("base log-probs: scoring the base model") == 1, stderr
    assert stderr.count("base replies: 3 prompts") == 1 and stderr.count("base chat log-probs: 3 conversations") == 1
    assert stderr.count("calibration tiny: tokenizing") + stderr.count("calibration tiny: cache hit") >= 1
    for branch in ("gguf-q8_0", "gguf-i1-q4_k_m"):
        report = json.loads((out / branch / "report.json").read_text())
        assert report["status"] == "passed", branch
    assert len(list((cache / "gguf").glob("*/tiny-mistral.F16.gguf"))) == 1
    assert len(list((cache / "reference").glob("*.npz"))) == 2  # the text reference and the chat one
    assert len(list((cache / "replies").glob("*.json"))) == 1
    assert len(list((cache / "eval").glob("*.npy"))) == 1 and len(list((cache / "eval").glob("*.json"))) == 1
    assert leftovers(cache) == [] and leftovers(out) == []


def test_full_cache_disk_is_one_line_naming_that_disk(tmp_path, tiny_model):
    """1 MB of cache: the preflight refuses it; forced past it, tokens fit and the 3.4 MB F16 GGUF hits ENOSPC
    mid-write. Either way one line names the cache, not --out."""
    config = write_config(tmp_path, tiny_model, VARIANTS[:1])
    cache = tmp_path / "small-cache"
    args = ["build", "--config", str(config), "--out", str(tmp_path / "out"), "--all"]
    proc = cli(*args, cache=cache, cwd=tmp_path, prefix=on_small_disk(cache, "1m"))
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-2].startswith(f"error: {cache}: the selected variants need about 3.")
    proc = cli(
        *args,
        "--no-preflight",
        cache=cache,
        cwd=tmp_path,
        prefix=on_small_disk(cache, "1m"),
    )
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert lines[0].startswith(f"error: {cache}/gguf/") and "tiny-mistral.F16.gguf: disk full while writing" in lines[0]
    assert "GB free on that disk" in lines[0] and "QUANTIZE_CACHE" in lines[0]
    assert [name for name in left(stderr) if ".partial" in name] == [], left(stderr)
    assert "file-digests.json" in left(stderr)  # the listing ran, and what fitted stayed
    assert not list((tmp_path / "out").glob("*gguf-q8_0*"))


def test_small_out_disk_is_refused_before_building(tmp_path, tiny_model):
    """--out on 3 MB: refused before any work, naming that disk (not the cache's, which has room): by the
    preflight, and without it by the per-variant free-space check."""
    config = write_config(tmp_path, tiny_model, [{"format": "gguf", "quant_type": "F16"}])
    out = tmp_path / "small-out"
    expected = {
        (): f"error: {out}: the selected variants need about 3.",
        ("--no-preflight",): (f"error: {out}: variant gguf-f16 needs about 0.07 GB but only 0.00 GB is free"),
    }
    for extra, start in expected.items():
        args = ["build", "--config", str(config), "--out", str(out), "--all", "--no-check", *extra]
        proc = cli(*args, cache=tmp_path / "cache", cwd=tmp_path, prefix=on_small_disk(out, "3m"))
        stdout, stderr = proc.communicate(timeout=600)
        lines = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
        assert lines[0].startswith(start), lines[0]
        assert "on that disk" in lines[0] and "--out" in lines[0]
        assert left(stderr) == []


def test_publish_reads_the_bytes_not_the_digest_memo(tmp_path, tiny_model):
    """A file changed in place after its check, size and mtime restored: the memo would still vouch for it."""
    config = write_config(tmp_path, tiny_model, VARIANTS[:1])
    cache, out = tmp_path / "cache", tmp_path / "out"
    build = cli("build", "--config", str(config), "--out", str(out), "--all", cache=cache, cwd=tmp_path)
    assert build.wait(timeout=600) == 0, build.stderr.read()[-3000:]
    gguf = out / "gguf-q8_0" / "tiny-mistral.Q8_0.gguf"
    stat = gguf.stat()
    with open(gguf, "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert gguf.stat().st_mtime_ns == stat.st_mtime_ns and gguf.stat().st_size == stat.st_size
    proc = cli(
        "publish",
        "--config",
        str(config),
        "--out",
        str(out),
        "--all",
        "--git",
        str(tmp_path / "mirror"),
        cache=cache,
        cwd=tmp_path,
    )
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1 and f"error: {gguf}: differs from report.json since it was checked" in stderr, stderr
    assert not (tmp_path / "mirror").exists()


def test_leftovers_of_a_killed_swap_are_cleaned_or_restored(tmp_path):
    """`.NAME.old-PID` of a dead pid: restored when the output is missing, removed when it exists."""
    from quantize.paths import clean_stale_partials

    dead = 2**22 + 12345  # above pid_max's default: no such process
    final = tmp_path / "gguf-q8_0"
    (tmp_path / f".gguf-q8_0.old-{dead}").mkdir()
    (tmp_path / f".gguf-q8_0.old-{dead}" / "report.json").write_text("{}")
    (tmp_path / f".gguf-q8_0.partial-{dead}").mkdir()
    clean_stale_partials(final)
    assert (final / "report.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["gguf-q8_0"]
    (tmp_path / f".gguf-q8_0.old-{dead}").mkdir()
    clean_stale_partials(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gguf-q8_0"]


def test_stage_peaks_are_their_own_and_the_process_peak_is_never_reset():
    """A 300 MB stage then a small one: each reports its own peak; the process high-water mark keeps the big one."""
    import numpy as np

    from quantize.measure import Stages, process_peak_rss

    stages = Stages()
    with stages.stage("big"):
        block = np.ones(300 * 2**20 // 8)
        del block
    with stages.stage("small"):
        small = np.ones(1000)
        del small
    big, little = stages.measures["big"].peak_rss_bytes, stages.measures["small"].peak_rss_bytes
    assert big - little > 250 * 2**20, (big, little)
    assert process_peak_rss() >= big
