"""Errors the CLI turns into one line and a non-zero exit.

Like huggingface_hub's `HfHubHTTPError` family: one base class, subclasses named
for what went wrong, and a message that says where and how to fix it.
"""

from __future__ import annotations

import os


class QuantizeError(Exception):
    """Base class: the message is printed as-is, on one line, and the CLI exits 1."""

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None):
        self.fix = fix
        super().__init__(f"{message} (fix: {fix})" if fix else message)


class ConfigError(QuantizeError):
    """A config or recipe file is invalid: names the file, the field and the fix."""

    exit_code = 2

    def __init__(self, file: str | os.PathLike[str], field: str, problem: str, fix: str | None = None):
        self.file, self.field, self.problem, self.fix = str(file), field, problem, fix
        super().__init__(f"{self.file}: {field}: {problem}", fix)


class UnknownVariantError(QuantizeError):
    """`--variant` names nothing in the config; the message lists the valid names."""

    exit_code = 2


class PluginError(QuantizeError):
    """A format package's `quantize.formats` entry point cannot be loaded or clashes with another format."""

    exit_code = 2


class CalibrationError(QuantizeError):
    """The calibration source cannot supply what the recipe asks for."""


class AssetError(QuantizeError):
    """A base model or data source could not be obtained (missing path, offline hub, pip failure)."""


class EngineError(QuantizeError):
    """A quantization engine failed or wrote something we cannot publish."""


class DamagedOutput(QuantizeError):
    """A variant folder is damaged: report.json unreadable, not JSON, invalid or from another schema, a file it
    lists missing or of another size, or files without a report. Names the file; the fix is to rebuild that variant.

    Kept apart from "not built" so a user is never told to build what is there but broken, and so `--all`
    commands can go on with the other variants while exiting non-zero."""

    def __init__(self, path: str | os.PathLike[str], problem: str, variant: str):
        self.path, self.problem, self.variant = str(path), problem, variant
        super().__init__(
            f"{self.path}: {problem}", fix=f"rebuild it: python -m quantize build --force --variant {variant}"
        )


class NotBuilt(QuantizeError):
    """A selected variant has no folder in OUT: `--all`, `--filter` and `--shard` runs skip and list it (a CI
    shard's out folder holds only its own variants); named with `--variant` it is an error."""


class DiskFullError(QuantizeError):
    """Not enough free space to write outputs; nothing was moved into place."""


class PreflightError(QuantizeError):
    """A stage's predicted peak (RAM, VRAM or disk) exceeds what this machine has: refused before any work."""


# -- publishing ------------------------------------------------------------------------------------------------------


class PublishRefused(QuantizeError):
    """The variant is not publishable (not built, not checked, failed its gates, or changed since)."""


class PublishError(QuantizeError):
    """The remote does not hold what was sent, or the hub refused the operation."""


class BranchMoved(PublishError):
    """Another writer committed to the branch between our listing and our commit; nothing was overwritten."""


class VerifyError(QuantizeError):
    """A published branch cannot be verified: not there, not downloadable, or without a manifest to hold it to.
    (A branch that *differs* from its manifest is a result, listed file by file, and exits 1 as well.)"""


class HubAuthError(PublishError):
    """The hub rejected the credentials (or there were none)."""
