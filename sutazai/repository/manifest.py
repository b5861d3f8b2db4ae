"""Immutable version manifests: what a model version is, byte for byte.

A manifest names every file of a version with its size and sha256 digest, where it came
from (source URI and the exact revision resolved) and what it is (format, tasks,
licence, parent version for derived models). Its ``digest`` hashes the file list, so two
versions with identical content have the same digest whatever their names or sources.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sutazai.errors import NotFoundError
from sutazai.repository.catalog import NAME_PATTERN, SHA256_PATTERN

MANIFEST_SCHEMA = 1
_SAFE_PART = re.compile(r"^[^\x00-\x1f\\]+$")


def validate_relative_path(path: str) -> str:
    """Accept only plain relative POSIX paths: no '..', no absolute, no control chars."""
    pure = PurePosixPath(path)
    if (
        not path
        or path.startswith("/")
        or pure.is_absolute()
        or any(part in ("..", ".", "") for part in path.split("/"))
        or not all(_SAFE_PART.match(part) for part in pure.parts)
    ):
        raise ValueError(f"unsafe file path {path!r}: must be relative, without '..'")
    return path


class PathProblems(ValueError):
    """The file paths of one version cannot form one folder; ``problems`` names each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def path_problems(paths: Iterable[str]) -> list[str]:
    """Why ``paths`` cannot be the files of one folder, one line per problem: a path that
    is unsafe (absolute, '..'), listed twice, or also the folder of another path ('x' and
    'x/y'). Empty when they can."""
    problems: list[str] = []
    seen: set[str] = set()
    for path in paths:
        try:
            validate_relative_path(path)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if path in seen:
            twice = f"path {path!r} appears twice"
            if twice not in problems:
                problems.append(twice)
        seen.add(path)
    clashing: set[str] = set()  # each file that is also a folder, named once
    for path in sorted(seen):
        parts = path.split("/")
        for folder in ("/".join(parts[:i]) for i in range(1, len(parts))):
            if folder in seen and folder not in clashing:
                clashing.add(folder)
                problems.append(f"path {folder!r} is both a file and the folder of {path!r}")
    return problems


class FileEntry(BaseModel):
    """One file of a version; the bytes live in the blob store under ``digest``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    size: int = Field(ge=0)
    digest: str

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return validate_relative_path(value)

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str) -> str:
        if not SHA256_PATTERN.match(value):
            raise ValueError("digest must be 64 lowercase hexadecimal characters")
        return value


def content_digest(files: list[FileEntry]) -> str:
    """sha256 of the canonical, sorted file list: the identity of a version's content."""
    canonical = json.dumps(
        [[f.path, f.size, f.digest] for f in sorted(files, key=lambda f: f.path)],
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class Manifest(BaseModel):
    """An immutable, published model version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = MANIFEST_SCHEMA
    name: str
    version: int = Field(ge=1)
    digest: str
    source: str
    revision: str
    format: str
    tasks: list[str]
    license: str
    parent: str | None = Field(default=None, description="'name:version' this derives from")
    description: str = ""
    files: list[FileEntry]
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(f"invalid model name {value!r}")
        return value

    @field_validator("files", mode="before")
    @classmethod
    def _all_path_problems(cls, value: Any) -> Any:
        """Every path problem at once (an unsafe path and a collision, say), before each
        entry's own check would stop at the first."""
        if isinstance(value, list | tuple):
            paths = [item.path if isinstance(item, FileEntry)
                     else item.get("path") if isinstance(item, dict) else None
                     for item in value]
            if all(isinstance(path, str) for path in paths):
                problems = path_problems(paths)  # type: ignore[arg-type]
                if problems:
                    raise PathProblems(problems)
        return value

    @field_validator("files")
    @classmethod
    def _unique_paths(cls, value: list[FileEntry]) -> list[FileEntry]:
        problems = path_problems(f.path for f in value)
        if problems:
            raise PathProblems(problems)
        if not value:
            raise ValueError("a version needs at least one file")
        return value

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


def parse_ref(ref: str) -> tuple[str, int | None]:
    """Split ``NAME[:VERSION]``; VERSION is a positive integer.

    The name is checked here because it becomes a folder name in the repository: ``../x``
    must not lead outside it. Digits are ASCII only (``str.isdigit`` also takes ``²``,
    which ``int`` then refuses with a bare ValueError).
    """
    name, sep, version = ref.partition(":")
    if not NAME_PATTERN.match(name):
        raise NotFoundError(
            f"{ref!r}: {name!r} is not a model name (lowercase letters, digits, '.', '_', "
            "'-'); see 'sutazai models list'"
        )
    if not sep:
        return name, None
    if not re.fullmatch(r"[0-9]+", version) or int(version) < 1:
        raise NotFoundError(
            f"{ref!r}: the version after ':' must be a positive number, e.g. {name}:1"
        )
    return name, int(version)
