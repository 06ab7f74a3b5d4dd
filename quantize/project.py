"""Loading a project: matrix expansion, resolution against the format registry, and every file it names
validated before any work.

Like mergekit, the whole file is validated up front, so a typo fails in a second with one
line naming the file, the field and the fix, not after an hour of calibration. The matrix
follows CI-matrix semantics: the cross product of `matrix` axes, minus `exclude` patterns,
plus `include` entries (an include that matches an existing combination on every axis it
names extends it, e.g. to mark it `default`). It sits above `formats` (each variant's spec
type, names and repo come from its format), calibration and the eval files it reads.
"""

from __future__ import annotations

import itertools
import math
import reprlib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import formats, naming, resources
from .calibration import load_recipe
from .checks.gates import load_gates
from .checks.smoke import load_suite
from .config import Project, ProjectConfig, Variant, find_recipe, load_yaml, pydantic_error, repo_id_problem
from .errors import ConfigError
from .evalset import ChatRecipe, load_chat_eval, load_eval

# A matrix is a few dozen variants; thousands means a typo or a hostile file, and each one costs hours.
MAX_VARIANTS = 1000


def _check_repo_formats(file: Path, cfg: ProjectConfig) -> None:
    for fmt in cfg.repos:
        if fmt not in formats.FORMATS:
            raise ConfigError(file, f"repos.{fmt}", f"unknown format {fmt!r}", "use " + formats.names_text())


def _combinations(file: Path, where: str, key: str, value: Any) -> list[dict[str, Any]]:
    """`include`/`exclude`: a list of mappings, each naming axis values (anything else used to be a traceback)."""
    fix = f"write `{key}: [{{bits: 4, group_size: 128}}]`, one mapping per combination"
    if not isinstance(value, list):
        raise ConfigError(file, f"{where}.{key}", f"must be a list of mappings, not {_kind(value)}", fix)
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ConfigError(
                file, f"{where}.{key}[{index}]", f"must be a mapping of axis values, not {_kind(item)}", fix
            )
    if len(value) > MAX_VARIANTS:
        raise ConfigError(
            file, f"{where}.{key}", f"has {len(value):,} entries, more than {MAX_VARIANTS:,}", "shorten it"
        )
    return value


def _kind(value: Any) -> str:
    kinds: dict[type, str] = {dict: "a mapping", list: "a list"}
    return kinds.get(type(value), f"the {'text' if isinstance(value, str) else 'value'} {reprlib.repr(value)}")


def _expand(entry: dict[str, Any], file: Path, where: str) -> list[dict[str, Any]]:
    """Expand one `variants:` entry (a plain entry expands to itself); the product's size is checked first."""
    entry = dict(entry)
    axes = entry.pop("matrix", None)
    include = _combinations(file, where, "include", entry.pop("include", []))
    exclude = _combinations(file, where, "exclude", entry.pop("exclude", []))
    fix = "see the matrix example in variants.yaml"
    if axes is None:
        if include or exclude:
            raise ConfigError(file, where, "`include`/`exclude` need a `matrix`", fix)
        return [entry]
    if not isinstance(axes, dict) or not all(isinstance(k, str) and isinstance(v, list) and v for k, v in axes.items()):
        raise ConfigError(file, where, "`matrix` maps each axis to a non-empty list of values", fix)
    size = math.prod(len(v) for v in axes.values())
    if size > MAX_VARIANTS:
        raise ConfigError(
            file,
            f"{where}.matrix",
            f"{size:,} combinations, more than the limit of {MAX_VARIANTS:,}",
            "split it into smaller matrices or shorten its axes",
        )
    keys = list(axes)
    combos = [dict(zip(keys, values)) for values in itertools.product(*axes.values())]
    combos = [c for c in combos if not any(all(c.get(k) == v for k, v in ex.items()) for ex in exclude)]
    for inc in include:
        on_axes = {k: v for k, v in inc.items() if k in axes}
        matched = [c for c in combos if on_axes and all(c[k] == v for k, v in on_axes.items())]
        for combo in matched:
            combo.update(inc)
        if not matched:
            combos.append(dict(inc))
    return [{**entry, **combo} for combo in combos]


def _resolve(spec, cfg: ProjectConfig) -> Variant:
    fmt = formats.get(spec.format)
    spec = fmt.complete(spec, cfg.calibration)
    name, branch = fmt.names(spec)
    repo = cfg.repos.get(fmt.name) or f"{cfg.owner or 'local'}/{cfg.base_model.display_name}-{fmt.title}"
    return Variant(
        name=name,
        branch=branch,
        spec=spec,
        repo=repo,
        default=spec.default,
        calibration=fmt.calibration(spec, cfg.calibration),
    )


def parse_config(data: Any, file: Path) -> Project:
    """Validate a loaded YAML document; every error is a one-line ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(file, "(top level)", "expected a mapping of keys", "see variants.yaml for the layout")
    try:
        cfg = ProjectConfig.model_validate(data)
    except ValidationError as err:
        raise pydantic_error(file, err) from None

    _check_names(file, cfg)
    _check_repo_formats(file, cfg)
    variants: list[Variant] = []
    for index, entry in enumerate(cfg.variants):
        where = f"variants[{index}]"
        expanded = _expand(entry, file, where)
        if len(variants) + len(expanded) > MAX_VARIANTS:
            raise ConfigError(
                file, "variants", f"more than {MAX_VARIANTS:,} variants", "split the matrix into several config files"
            )
        for combo in expanded:
            fmt = combo.get("format")
            label = where + (
                f" ({', '.join(f'{k}={v}' for k, v in combo.items() if k != 'format')})" if "matrix" in entry else ""
            )
            if not isinstance(fmt, str) or fmt not in formats.FORMATS:
                raise ConfigError(file, f"{label}.format", f"unknown format {fmt!r}", "use " + formats.names_text())
            try:
                spec = formats.get(fmt).spec_type.model_validate(combo)
            except ValidationError as err:
                raise pydantic_error(file, err, label, formats.get(fmt).field_fixes) from None
            variants.append(_resolve(spec, cfg))

    # The eval files and recipes are read now, not after an hour of quantization.
    for field, load in (
        ("evaluation", load_eval),
        ("smoke", load_suite),
        ("gates", load_gates),
        ("chat_evaluation", load_chat_eval),
    ):
        name = getattr(cfg, field)
        if name is None:
            continue
        found = resources.find("eval", name, file.parent)
        if found is None:
            raise ConfigError(file, field, f"no eval/{name}.yaml", "add the file or name an existing one")
        loaded_file = load(found)
        if isinstance(loaded_file, ChatRecipe) and loaded_file.suite is not None:
            suite = resources.find("eval", loaded_file.suite, file.parent)
            if suite is None:
                raise ConfigError(found, "suite", f"no eval/{loaded_file.suite}.yaml", "name an existing smoke suite")
            load_suite(suite)
    _check_unique(file, variants)
    variants = _assign_defaults(file, variants)
    loaded: set[str] = set()
    for variant in variants:
        recipes: set[str] = {variant.calibration} if variant.calibration else set()
        for recipe in sorted(recipes - loaded):
            try:
                load_recipe(find_recipe(file.parent, recipe))
            except FileNotFoundError:
                raise ConfigError(
                    file,
                    f"variant {variant.name}: calibration",
                    f"no recipe named {recipe!r}",
                    f"add calibration/{recipe}.yaml or use one of: {', '.join(available_recipes(file.parent))}",
                ) from None
            loaded.add(recipe)
    return Project(path=file, config=cfg, variants=tuple(variants))


def _check_names(file: Path, cfg: ProjectConfig) -> None:
    """Names derived rather than written (the model name from `id`/`path`, default repos) obey the same rules."""
    base = cfg.base_model
    if not base.name and not naming.is_safe_name(base.display_name):
        source = "id" if base.id else "path" if base.path else "pypi_gguf.member"
        raise ConfigError(
            file,
            f"base_model.{source}",
            f"gives the model name {base.display_name!r}, which is not a safe file name",
            "set base_model.name (letters, digits, '.', '_', '-')",
        )
    owner = cfg.owner or "local"
    for fmt in formats.FORMATS.values():
        repo = cfg.repos.get(fmt.name) or f"{owner}/{base.display_name}-{fmt.title}"
        if repo_id_problem(repo):
            raise ConfigError(
                file,
                f"repos.{fmt.name}",
                f"the default repo {repo!r} {repo_id_problem(repo)}",
                f"set repos.{fmt.name} to OWNER/NAME or shorten base_model.name",
            )


def _check_unique(file: Path, variants: list[Variant]) -> None:
    seen: dict[str, Variant] = {}
    for variant in variants:
        for key in (variant.name, variant.branch):
            other = seen.get(key)
            if other is not None and other is not variant:
                raise ConfigError(
                    file,
                    "variants",
                    f"two variants are both named {key!r}",
                    "remove the duplicate or add it to the matrix's `exclude`",
                )
            seen[key] = variant


def _assign_defaults(file: Path, variants: list[Variant]) -> list[Variant]:
    """At most one default per format; a format with a single variant defaults to it."""
    out = list(variants)
    for fmt in formats.FORMATS:
        members = [v for v in out if v.format == fmt]
        marked = [v for v in members if v.default]
        if len(marked) > 1:
            raise ConfigError(
                file,
                "variants.default",
                f"{fmt} has {len(marked)} defaults ({', '.join(v.name for v in marked)})",
                "mark exactly one variant per format `default: true`",
            )
        if formats.get(fmt).needs_marked_default(members) and not marked:
            raise ConfigError(
                file,
                "variants.default",
                f"{fmt} has {len(members)} variants and none is `default: true`",
                "mark the one that goes on the repo's main branch",
            )
        if len(members) == 1 and not marked:
            out[out.index(members[0])] = Variant(**{**members[0].__dict__, "default": True})
    return out


def available_recipes(root: Path) -> list[str]:
    return resources.available("calibration", root)


def load_config(path: str | Path) -> Project:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(file, "(file)", "not found", "pass --config FILE or run where variants.yaml is")
    return parse_config(load_yaml(file, "variants file"), file.resolve())
