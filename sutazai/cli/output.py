"""Shared output helpers: JSON for machines, rich tables for people, errors on stderr."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.filesize import decimal


def _console(stderr: bool = False) -> Console:
    """Full-width tables in a terminal; 120 columns when piped or logged (CI, make run)."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=120)


console = _console()
errors = _console(stderr=True)


def emit_json(data: Any) -> None:
    """Plain JSON on stdout (no rich markup, no wrapping) for scripts and pipelines."""
    print(json.dumps(data, indent=2, default=str))  # noqa: T201 - the CLI's stdout


def size(value: int) -> str:
    return decimal(value)


def short(digest: str | None) -> str:
    return digest[:12] if digest else "-"
