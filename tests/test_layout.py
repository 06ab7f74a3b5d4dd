"""The shape of the package, read from its syntax trees: formats live behind the registry, imports run one way.

Each rule is a function over source text, so each has a negative control: a snippet that
breaks the rule must be flagged, or the rule could pass on anything.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

from quantize import formats

PACKAGE = ROOT / "quantize"

# Third-party modules a function may import, and why they are not imported at the top of their module.
# Everything else, and every module of this package, is imported at the top: a function-level import of our
# own code is how an import circle hides.
LAZY_ENGINES = {
    "torch": "2-3 s and 1 GB of RSS; config, plan, card and publish must not pay it",
    "transformers": "imports torch",
    "gptqmodel": "imports torch and compiles kernels at import",
    "auto_round": "imports torch and transformers",
    "safetensors": "its torch API (safetensors.torch) imports torch",
    "llama_cpp": "loads llama.cpp's shared library (and its CPU backends) at import",
    "mlx": "an optional engine: only MLX variants need it",
    "mlx_lm": "an optional engine: only MLX variants need it, and it imports transformers",
    "huggingface_hub": "0.5 s at import; only repo-id checks and hub transfers need it",
    "datasets": "pulls pyarrow and fsspec; only a `hf:` text source needs it",
    "pyarrow": "only a parquet text source needs it",
    "matplotlib": "only the comparison plot needs it (and it picks its backend at import)",
    "sentencepiece": "only the GGUF vocabulary of a sentencepiece tokenizer needs it",
    "httpx2": "only the hub's HTTP transfer needs it",
}

SPEC_COMMON = {"format", "default", "calibration", "seq_len", "samples"}


def _sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def _outside_formats(path: str) -> bool:
    return "formats" not in Path(path).parts


def function_imports(path: str, source: str) -> list[str]:
    """Imports inside function bodies that are ours, or third-party modules not in LAZY_ENGINES."""
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if name.startswith(".") or root == "quantize" or root not in LAZY_ENGINES:
                    found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def format_switches(path: str, source: str, names: set[str], spec_fields: set[str]) -> list[str]:
    """Code that asks which format it holds: a comparison or `match` against a format name, an isinstance of a
    format's class or spec, or a spec-only field read by name (`getattr(spec, "imatrix")`, `v.spec.bits`)."""
    found = []

    def flag(node: ast.AST) -> None:
        found.append(f"{path}:{getattr(node, 'lineno', '?')}: {ast.unparse(node)}")

    def is_name(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant) and node.value in names:
            return True
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(is_name(e) for e in node.elts)
        return False

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(is_name(x) for x in [node.left, *node.comparators]):
            flag(node)
        elif isinstance(node, ast.match_case) and isinstance(node.pattern, ast.MatchValue):
            if is_name(node.pattern.value):
                flag(node.pattern)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = node.args
            if node.func.id == "isinstance" and len(args) == 2:
                classes = args[1].elts if isinstance(args[1], ast.Tuple) else [args[1]]
                titles = {n.upper() for n in names}
                for c in classes:
                    cname = c.id if isinstance(c, ast.Name) else c.attr if isinstance(c, ast.Attribute) else ""
                    if cname.endswith("Spec") or cname.upper() in titles:
                        flag(node)
            if node.func.id in ("getattr", "hasattr") and len(args) >= 2:
                if isinstance(args[1], ast.Constant) and args[1].value in spec_fields:
                    flag(node)
        elif isinstance(node, ast.Attribute) and node.attr in spec_fields:
            if isinstance(node.value, ast.Attribute) and node.value.attr == "spec":
                flag(node)
    return found


def private_imports(path: str, source: str) -> list[str]:
    """`from X import _name` where X is another package (folder) than the importing module's."""
    here = Path(path).parent
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
        if not private:
            continue
        if node.level:
            target = here
            for _ in range(node.level - 1):
                target = target.parent
            target = target.joinpath(*(node.module or "").split(".")) if node.module else target
        elif (node.module or "").split(".")[0] == "quantize":
            target = Path(*(node.module or "").split("."))
        else:
            continue  # another project's private names are that project's business
        # a module `pkg/mod.py` belongs to folder `pkg`; a package `pkg/sub` is folder `pkg/sub`
        folder = target if (ROOT / target).is_dir() else target.parent
        if folder != here:
            found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def _spec_fields() -> set[str]:
    fields: set[str] = set()
    for fmt in formats.FORMATS.values():
        fields |= set(fmt.spec_type.model_fields)
    return fields - SPEC_COMMON


def test_no_function_level_import_of_our_own_code_or_an_unlisted_module():
    offenders = [hit for path, src in _sources().items() for hit in function_imports(path, src)]
    assert offenders == []


def test_function_import_rule_catches_a_dodged_circle():
    """Negative control: our own module, relative or absolute, and an unlisted library are flagged; torch is not."""
    snippet = (
        "def f():\n    from .. import formats\n    from quantize.plan import Planner\n    import json\n"
        "    import torch\n    from transformers import AutoModel\n"
    )
    hits = function_imports("quantize/x.py", snippet)
    assert [h.split(": ", 1)[1] for h in hits] == [
        "from .. import formats",
        "from quantize.plan import Planner",
        "import json",
    ]


def test_nothing_outside_formats_asks_which_format_it_holds():
    names, fields = set(formats.FORMATS), _spec_fields()
    offenders = [
        hit
        for path, src in _sources().items()
        if _outside_formats(path)
        for hit in format_switches(path, src, names, fields)
    ]
    assert offenders == []


def test_the_switch_rule_catches_every_shape_of_a_switch():
    """Negative control: each shape the old grep missed is flagged; a registry lookup is not."""
    names, fields = set(formats.FORMATS), _spec_fields()
    assert {"imatrix", "bits", "quant_type"} <= fields
    shapes = [
        'if fmt == "gguf": pass',
        'if variant.format != "mlx": pass',
        'if fmt in {"gptq", "awq"}: pass',
        'match fmt:\n    case "gguf":\n        pass',
        "isinstance(s, GGUFSpec)",
        "isinstance(f, (GPTQ, AWQ))",
        'getattr(variant.spec, "imatrix", None)',
        "v.spec.bits",
    ]
    for shape in shapes:
        assert format_switches("quantize/x.py", shape, names, fields), shape
    fine = 'fmt = formats.get(name)\nif name not in formats.FORMATS: pass\nv.spec.format\nx == "main"'
    assert format_switches("quantize/x.py", fine, names, fields) == []


def test_no_private_name_is_imported_across_packages():
    offenders = [hit for path, src in _sources().items() for hit in private_imports(path, src)]
    assert offenders == []


def test_the_private_import_rule_catches_one():
    """Negative control: a private name from another folder is flagged, one from a sibling module is not."""
    assert private_imports("quantize/card/render.py", "from ..formats.gptqmodel import _cast\n")
    assert private_imports("quantize/card/render.py", "from quantize.plan import _peak\n")
    assert private_imports("quantize/card/render.py", "from .compare import _rows\n") == []


def test_bench_uses_no_private_name_of_the_package():
    offenders = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("quantize"):
                offenders += [f"{path.name}:{node.lineno}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert offenders == []


def test_config_records_and_cards_import_no_engine():
    """Reading a config, a report or writing a card must not pull in torch or an engine."""
    code = (
        "import sys; import quantize.config, quantize.project, quantize.records, quantize.card, "
        "quantize.hub.publish, quantize.plan; "
        "engines = ('torch', 'gptqmodel', 'llama_cpp', 'transformers', 'mlx', 'mlx_lm'); "
        "print(sorted(m for m in engines if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
