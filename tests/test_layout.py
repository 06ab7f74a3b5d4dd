"""The shape of the package: formats live behind the registry, records at the bottom of the import graph."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT

FORMAT_SWITCH = re.compile(r"format *(==|!=) *['\"]|format in [(\[]|isinstance\([^)]*(GPTQ|AWQ|GGUF|MLX)Spec")


def test_nothing_outside_formats_asks_which_format_it_holds():
    offenders = []
    for path in sorted((ROOT / "quantize").rglob("*.py")):
        if "formats" in path.relative_to(ROOT / "quantize").parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if FORMAT_SWITCH.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_pattern_catches_a_switch():
    """Negative control for the test above."""
    assert FORMAT_SWITCH.search('if variant.format == "gguf":') and FORMAT_SWITCH.search("isinstance(s, GPTQSpec)")


def test_config_records_and_cards_import_no_engine():
    """Reading a config, a report or writing a card must not pull in torch or an engine."""
    code = (
        "import sys; import quantize.config, quantize.records, quantize.card, quantize.hub.publish, quantize.plan; "
        "engines = ('torch', 'gptqmodel', 'llama_cpp', 'transformers', 'mlx', 'mlx_lm'); "
        "print(sorted(m for m in engines if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
