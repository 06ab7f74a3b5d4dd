"""Choosing variants: by name, by filter, and by shard, so N CI workers split a matrix exactly."""

from __future__ import annotations

import fnmatch

from .config import Variant
from .errors import QuantizeError


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise QuantizeError(f"--shard {text!r}: expected K/N such as 2/4") from None
    if not 1 <= k <= n:
        raise QuantizeError(f"--shard {text!r}: K must be between 1 and N")
    return k, n


def shard(variants: list[Variant], k: int, n: int) -> list[Variant]:
    """Round-robin over the config's order: every variant lands in exactly one of the N shards."""
    return [v for i, v in enumerate(variants) if i % n == k - 1]


def matches(variant: Variant, pattern: str) -> bool:
    """`key=value` against format, name, branch or a parameter; otherwise a glob on name or branch."""
    if "=" in pattern:
        key, value = (s.strip() for s in pattern.split("=", 1))
        fields = {
            "format": variant.format,
            "name": variant.name,
            "branch": variant.branch,
            "default": variant.default,
            **variant.params(),
        }
        if key not in fields:
            raise QuantizeError(f"--filter {pattern!r}: unknown key {key!r}; use one of {', '.join(sorted(fields))}")
        return str(fields[key]).lower() == value.lower()
    return fnmatch.fnmatch(variant.name, pattern) or fnmatch.fnmatch(variant.branch, pattern)


def select(variants: list[Variant], filters: list[str] | None, shard_spec: str | None) -> list[Variant]:
    """Filters, then the shard. A filter matching nothing is an error: a typo must not build nothing and succeed."""
    chosen = [v for v in variants if all(matches(v, f) for f in filters or [])]
    if filters and not chosen:
        raise QuantizeError(
            f"no variant matches {' '.join(f'--filter {f}' for f in filters)}",
            "see the names and parameters with `python -m quantize list`",
        )
    if shard_spec:
        chosen = shard(chosen, *parse_shard(shard_spec))
    return chosen
