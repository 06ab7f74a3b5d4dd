"""The format registry: format name -> the one `Format` that knows it.

The built-in formats are listed here; a package outside this one adds a format by an entry
point in the `quantize.formats` group (`awq2 = "my_formats:AWQ2"`, a `Format` subclass or
instance), found when the registry is first read. Nothing outside this package asks
which format it holds: stages call the `Format` hooks of `of(variant)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import metadata

from ..errors import PluginError
from ..records import CORE_PACKAGES
from .awq import AWQ
from .base import BuildJob, EngineResult, Format, Needs, PlanWork, Scorer
from .gguf import GGUF
from .gptq import GPTQ
from .mlx import MLX

ENTRY_POINT_GROUP = "quantize.formats"
BUILT_IN: tuple[Format, ...] = (GPTQ(), AWQ(), GGUF(), MLX())


def _plugin(entry: metadata.EntryPoint) -> Format:
    """One entry point's format, or a one-line error naming the package, the entry point and the fix."""
    where = f"entry point {entry.name} = {entry.value!r} ({entry.dist.name if entry.dist else 'unknown package'})"
    try:
        found = entry.load()
    except Exception as err:  # any import failure of someone else's package: say whose
        raise PluginError(
            f"{where}: cannot be loaded: {type(err).__name__}: {err}",
            fix="fix or uninstall that package",
        ) from err
    fmt = found() if isinstance(found, type) else found
    if not isinstance(fmt, Format):
        raise PluginError(f"{where}: is not a quantize.formats.base.Format", fix="point it at a Format subclass")
    if fmt.name != entry.name:
        raise PluginError(
            f"{where}: the entry point's name differs from the format's name {fmt.name!r}",
            fix=f"name the entry point {fmt.name}",
        )
    return fmt


def _registry() -> dict[str, Format]:
    found = {f.name: f for f in BUILT_IN}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in found:
            raise PluginError(
                f"entry point {entry.name} = {entry.value!r}: the format name {entry.name!r} is taken",
                fix="give the plugin's format another name, or uninstall one of the two packages",
            )
        found[entry.name] = _plugin(entry)
    return found


class _Registry(Mapping[str, Format]):
    """The registry, filled on first use: a broken plugin then fails inside a command, as the CLI's one-line
    error, not as a traceback while modules import."""

    def __init__(self) -> None:
        self._found: dict[str, Format] | None = None

    def _formats(self) -> dict[str, Format]:
        if self._found is None:
            self._found = _registry()
        return self._found

    def __getitem__(self, name: str) -> Format:
        return self._formats()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._formats())

    def __len__(self) -> int:
        return len(self._formats())


FORMATS: Mapping[str, Format] = _Registry()


def names_text() -> str:
    """`gptq, awq, gguf or mlx`: the valid names, for messages."""
    names = list(FORMATS)
    return ", ".join(names[:-1]) + " or " + names[-1]


def get(name: str) -> Format:
    return FORMATS[name]


def of(variant) -> Format:
    return FORMATS[variant.spec.format]


def recorded_packages(variant) -> tuple[str, ...]:
    """Whose versions a variant's report records: every build's core, then its format's own declaration."""
    fmt = of(variant)
    return tuple(dict.fromkeys((*CORE_PACKAGES, *fmt.engine_packages, *fmt.recorded_packages)))


__all__ = [
    "BUILT_IN",
    "ENTRY_POINT_GROUP",
    "FORMATS",
    "BuildJob",
    "EngineResult",
    "Format",
    "Needs",
    "PlanWork",
    "Scorer",
    "get",
    "names_text",
    "of",
    "recorded_packages",
]
