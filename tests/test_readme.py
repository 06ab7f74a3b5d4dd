"""The README's compatibility table is the code's (formats/clients.py), rendered: it cannot drift."""

from __future__ import annotations

from conftest import ROOT

from quantize import formats
from quantize.formats.sections import table

CASES = [  # (what the row is, the spec as variants.yaml would give it)
    (
        "GPTQ 4-bit, act order (static layout, the default), g32/64/128",
        {"format": "gptq", "bits": 4, "group_size": 128},
    ),
    ("GPTQ 4-bit, no act order", {"format": "gptq", "bits": 4, "group_size": 128, "desc_act": False}),
    ("GPTQ 4-bit, no groups (-1)", {"format": "gptq", "bits": 4, "group_size": -1}),
    (
        "GPTQ 4-bit, dynamic act order (`static_groups: false`)",
        {"format": "gptq", "bits": 4, "group_size": 128, "static_groups": False},
    ),
    ("GPTQ 8-bit", {"format": "gptq", "bits": 8, "group_size": 128}),
    ("AWQ 4-bit GEMM", {"format": "awq", "bits": 4, "group_size": 128}),
    ("GGUF, every type", {"format": "gguf", "quant_type": "Q4_K_M"}),
    ("MLX, every mode and recipe", {"format": "mlx", "bits": 4}),
]


def compatibility_table() -> str:
    supports = [
        (label, formats.get(doc["format"]).support(formats.get(doc["format"]).spec_type(**doc))) for label, doc in CASES
    ]
    clients = list(dict.fromkeys(s.client for _, rows in supports for s in rows))
    cells = [
        [label] + [next((s.mark for s in rows if s.client == c), "-") for c in clients] for label, rows in supports
    ]
    return table(["file", *clients], None, cells)


def test_readme_compatibility_table_is_rendered_from_the_code():
    expected = compatibility_table()
    assert expected in (ROOT / "README.md").read_text(), "paste this table into README.md:\n" + expected
