"""Declarative files the toolkit ships (calibration recipes, eval suites, example configs) and their lookup.

They live in `quantize/data/` so a wheel install carries them; the repository's top-level
`calibration/`, `eval/` and `examples/` are links to the same folders. A project's own
files beside its config (or one folder above it) take precedence over the packaged ones.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
KINDS = ("calibration", "eval", "examples")


def search_path(kind: str, config_dir: Path) -> list[Path]:
    """Folders searched for `kind` files, in order: beside the config, above it, the packaged ones."""
    assert kind in KINDS, kind
    return [Path(config_dir) / kind, Path(config_dir).parent / kind, DATA / kind]


def find(kind: str, name: str, config_dir: Path) -> Path | None:
    """`KIND/NAME.yaml` from the first folder of the search path that has it, else None."""
    for folder in search_path(kind, config_dir):
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None


def available(kind: str, config_dir: Path) -> list[str]:
    """Every name `find` would resolve for `kind`, sorted."""
    return sorted({p.stem for folder in search_path(kind, config_dir) for p in folder.glob("*.yaml")})
