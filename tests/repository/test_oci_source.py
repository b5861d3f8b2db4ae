"""``oci:`` and ``ollama:`` sources against Debian's docker-registry on 127.0.0.1.

The registry is the real CNCF distribution server; the model is pushed through the
registry's HTTP API in the Ollama layout (media-typed GGUF, template, params and licence
layers), exactly as ``ollama push`` lays it out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from sutazai.config import Settings
from sutazai.errors import SourceError
from sutazai.repository import Repository, load_catalog, pull
from tests.helpers import entry
from tests.servers import OciRegistry

GGUF = b"GGUF" + (3).to_bytes(4, "little") + os.urandom(64 * 1024)
LAYERS = [
    ("application/vnd.ollama.image.model", GGUF),
    ("application/vnd.ollama.image.template", b"{{ .System }}\n{{ .Prompt }}"),
    ("application/vnd.ollama.image.params", json.dumps({"temperature": 0.7}).encode()),
    ("application/vnd.ollama.image.license", b"Gemma Terms of Use (test copy)\n"),
]


def test_pull_ollama_layout_from_an_oci_registry(
    oci_registry: OciRegistry, settings: Settings, repo: Repository,
    write_catalog: Callable[..., Path],
) -> None:
    digest = oci_registry.push_ollama_model("library/tiny-gemma", "270m", LAYERS)
    host = oci_registry.url.removeprefix("http://")
    write_catalog(entry("tiny-gemma", f"oci://{host}/library/tiny-gemma:270m", format="gguf"))
    result = pull(load_catalog(settings.catalog).get("tiny-gemma"), repo, settings)

    manifest = result.manifest
    assert result.created and manifest.revision == digest
    files = {f.path for f in manifest.files}
    assert files == {"model.gguf", "template", "params.json", "LICENSE", "config.json",
                     "manifest.json"}
    snapshot = repo.snapshot_path(manifest)
    assert (snapshot / "model.gguf").read_bytes() == GGUF
    assert json.loads((snapshot / "manifest.json").read_bytes())["layers"][0]["mediaType"] == (
        "application/vnd.ollama.image.model")

    again = pull(load_catalog(settings.catalog).get("tiny-gemma"), repo, settings)
    assert again.unchanged and again.downloaded_bytes == 0


def test_ollama_scheme_uses_the_configured_registry_and_library_namespace(
    oci_registry: OciRegistry, tmp_path: Path, write_catalog: Callable[..., Path]
) -> None:
    oci_registry.push_ollama_model("library/gemma3", "270m", LAYERS)
    settings = Settings(home=tmp_path / ".sutazai", catalog=tmp_path / "catalog.yaml",
                        ollama_registry=oci_registry.url.removeprefix("http://"))
    write_catalog(entry("gemma3-ollama", "ollama:gemma3:270m", format="gguf",
                        exclude=["LICENSE"]))
    repo = Repository(settings.repository_root)
    manifest = pull(load_catalog(settings.catalog).get("gemma3-ollama"), repo, settings).manifest
    assert "LICENSE" not in {f.path for f in manifest.files}
    assert (repo.snapshot_path(manifest) / "template").read_bytes().startswith(b"{{ .System")


def test_pinned_digest_and_missing_tags_are_reported(
    oci_registry: OciRegistry, settings: Settings, repo: Repository,
    write_catalog: Callable[..., Path],
) -> None:
    digest = oci_registry.push_ollama_model("library/pinned", "v1", LAYERS)
    host = oci_registry.url.removeprefix("http://")
    write_catalog(entry("pinned", f"oci://{host}/library/pinned", revision=digest),
                  entry("missing", f"oci://{host}/library/pinned:nope"))
    catalog = load_catalog(settings.catalog)
    assert pull(catalog.get("pinned"), repo, settings).manifest.revision == digest
    with pytest.raises(SourceError, match="does not exist"):
        pull(catalog.get("missing"), repo, settings)
