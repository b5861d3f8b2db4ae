"""Small helpers shared by tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def entry(name: str, source: str, **extra: Any) -> dict[str, Any]:
    """A valid catalog entry with test defaults."""
    return {"name": name, "source": source, "format": "other", "tasks": ["text-generation"],
            "license": "apache-2.0", **extra}


def flip_byte(path: Path, offset: int = 0) -> None:
    """Corrupt one byte in place (blobs are read-only; root may still write them)."""
    os.chmod(path, 0o644)
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
