"""Names that become file names, folders, branches or repos: one strict rule for what may.

Each format names its own variants and branches (formats/*: the names users already
download by, as the published repos spell them); every such name passes `is_safe_name` first.
"""

from __future__ import annotations

import re

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def is_safe_name(name: str) -> bool:
    """True for a name that can be a file name or path part as it is: no separator, no `..`, no leading dot or dash."""
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None and ".." not in name
