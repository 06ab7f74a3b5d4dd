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


class HubAuthError(PublishError):
    """The hub rejected the credentials (or there were none)."""
