"""The declarative catalog of models to mirror (``models/catalog.yaml``).

Parsing is strict on purpose: a typo in a catalog silently mirroring the wrong thing is
worse than a failed run. Every error names the entry and the field, and says what to do.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sutazai.errors import CatalogError

SCHEMES = ("pypi", "https", "http", "file", "hf", "oci", "ollama")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")

ModelFormat = Literal["gguf", "safetensors", "spacy", "onnx", "pytorch", "other"]
Task = Literal[
    "text-generation", "chat", "embeddings", "ner", "relation-extraction", "classification",
    "reranking",
]


def source_scheme(uri: str) -> str:
    """The scheme of a source URI (``pypi:pkg`` -> ``pypi``), or '' when it has none."""
    head, sep, _ = uri.partition(":")
    return head.lower() if sep else ""


class CatalogEntry(BaseModel):
    """One model to mirror: where it comes from, which revision, and what it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Repository and registry name: lowercase, digits, . _ -")
    source: str = Field(description="Source URI; the scheme picks the source.")
    revision: str | None = Field(
        default=None, description="Pinned revision: package version, hub commit, tag."
    )
    sha256: str | None = Field(default=None, description="Expected digest of a one-file model.")
    digest: str | None = Field(
        default=None, description="Expected content digest of the whole version."
    )
    format: ModelFormat
    tasks: list[Task] = Field(min_length=1)
    license: str
    include: list[str] = Field(
        default_factory=list, description="Glob patterns selecting the files to keep."
    )
    exclude: list[str] = Field(default_factory=list, description="Glob patterns to drop.")
    allow_pickle: bool = Field(
        default=False, description="Accept pickle-based weights (.bin .pt .pth .pkl .ckpt)."
    )
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(
                "must be 1-64 characters of lowercase letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        scheme = source_scheme(value)
        if scheme not in SCHEMES:
            raise ValueError(
                f"unknown scheme {scheme or '(none)'!r}; use one of "
                + ", ".join(f"{s}:" for s in SCHEMES)
            )
        if not value.partition(":")[2].strip("/"):
            raise ValueError("names no package, URL, path or repository after the scheme")
        return value

    @field_validator("sha256", "digest")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower().removeprefix("sha256:")
        if not SHA256_PATTERN.match(value):
            raise ValueError("must be 64 hexadecimal characters (a sha256 digest)")
        return value

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a task twice")
        return value

    @model_validator(mode="after")
    def _pinned(self) -> CatalogEntry:
        if self.scheme in ("pypi", "hf") and not self.revision:
            raise ValueError(
                f"field 'revision': a {self.scheme}: source must pin a revision "
                "(package version or hub commit) so that mirrors are reproducible"
            )
        return self

    @property
    def scheme(self) -> str:
        return source_scheme(self.source)


class Catalog(BaseModel):
    """The whole catalog file."""

    model_config = ConfigDict(extra="forbid")

    models: list[CatalogEntry]

    def get(self, name: str) -> CatalogEntry:
        for entry in self.models:
            if entry.name == name:
                return entry
        known = ", ".join(e.name for e in self.models) or "(none)"
        raise CatalogError(f"no model named {name!r} in the catalog; known models: {known}")

    def select(self, names: list[str] | None) -> list[CatalogEntry]:
        """The entries for ``names`` in the order given, or every entry when empty."""
        return [self.get(n) for n in names] if names else list(self.models)


def _describe(err: Any, raw_models: Any) -> str:
    loc = list(err["loc"])
    where = "catalog"
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        index = loc[1]
        name = None
        if isinstance(raw_models, list) and index < len(raw_models):
            item = raw_models[index]
            name = item.get("name") if isinstance(item, dict) else None
        where = f"entry {index + 1}" + (f" ({name})" if isinstance(name, str) else "")
        loc = loc[2:]
    field = ".".join(str(p) for p in loc)
    read_as = _read_as(err["input"]) if err["type"] == "string_type" else None
    if read_as:
        key = f"{loc[-1]}: " if loc and isinstance(loc[-1], str) else ""
        return (f"{where}: field {field!r} was read as {read_as}; quote it in the catalog: "
                f"{key}\"{_as_written(err['input'])}\"")
    message = str(err["msg"]).removeprefix("Value error, ")
    if message.startswith("field '"):
        return f"{where}: {message}"
    if err["type"] == "extra_forbidden":
        message = "unknown field; remove it or check its spelling"
    return f"{where}: field {field!r}: {message}" if field else f"{where}: {message}"


def parse_catalog(data: Any, origin: str = "catalog") -> Catalog:
    """Validate already-loaded YAML data; raise CatalogError naming entry and field."""
    if not isinstance(data, dict):
        raise CatalogError(f"{origin}: expected a mapping with a 'models' list at the top")
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as exc:
        raw_models = data.get("models")
        problems = "\n  ".join(_describe(e, raw_models) for e in exc.errors())
        raise CatalogError(f"{origin} is invalid:\n  {problems}") from None
    seen: set[str] = set()
    for index, entry in enumerate(catalog.models):
        if entry.name in seen:
            raise CatalogError(
                f"{origin} is invalid:\n  entry {index + 1} ({entry.name}): field 'name': "
                "the name is used by an earlier entry; names must be unique"
            )
        seen.add(entry.name)
    return catalog


def _read_as(value: Any) -> str | None:
    """What YAML made of an unquoted value where text was expected, or None."""
    if isinstance(value, bool):
        return "true or false (YAML reads unquoted yes, no, on, off so)"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, date):
        return "a date"
    return None


def _as_written(value: Any) -> str:
    if isinstance(value, bool):
        return "..."  # yes, on or true: YAML does not say which
    return str(getattr(value, "written", value))


class _WrittenInt(int):
    written: str


class _WrittenFloat(float):
    written: str


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps how each number was written: ``revision: 1.10`` is read as
    1.1 and ``sha256: 0123…`` (digits 0-7 only) as octal, so an error quotes the text."""


def _int_as_written(loader: _Loader, node: yaml.ScalarNode) -> int:
    kept = _WrittenInt(loader.construct_yaml_int(node))
    kept.written = str(node.value)
    return kept


def _float_as_written(loader: _Loader, node: yaml.ScalarNode) -> float:
    kept = _WrittenFloat(loader.construct_yaml_float(node))
    kept.written = str(node.value)
    return kept


_Loader.add_constructor("tag:yaml.org,2002:int", _int_as_written)
_Loader.add_constructor("tag:yaml.org,2002:float", _float_as_written)


def load_catalog(path: Path) -> Catalog:
    """Read and validate a catalog file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(
            f"catalog {path} does not exist; create it or set SUTAZAI_CATALOG"
        ) from None
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                           "save it as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path} is not valid YAML: {exc}") from None
    return parse_catalog(data, origin=str(path))
