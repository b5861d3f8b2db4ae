"""GGUF -> Hugging Face safetensors: a derived version with lineage, in the repository and
in MLflow, made once. Real Gemma 3 270M weights, real transformers conversion (~40 s)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sutazai.config import Settings
from sutazai.errors import ConversionError
from sutazai.optimize.derive import convert_to_safetensors
from sutazai.optimize.gguf_to_hf import convert_gguf_to_hf
from sutazai.repository import open_repository
from sutazai.workflows.mirror import mirror_catalog
from tests.conftest import gemma_entry

pytestmark = pytest.mark.slow


def test_gemma_gguf_becomes_a_registered_derived_version(settings: Settings,
                                                          gemma_gguf: Path) -> None:
    settings.catalog.write_text(yaml.safe_dump({"models": [gemma_entry(gemma_gguf)]}))
    assert mirror_catalog(settings)[0].error is None
    repo = open_repository(settings)
    parent = repo.get("gemma3-270m")

    derived, created = convert_to_safetensors(settings, parent)
    assert created
    assert (derived.name, derived.version, derived.format) == ("gemma3-270m-hf", 1, "safetensors")
    assert derived.parent == "gemma3-270m:1" and derived.source == "derived:gemma3-270m:1"
    assert derived.revision == parent.digest and derived.tasks == parent.tasks
    paths = {f.path for f in derived.files}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= paths
    folder = repo.ensure_snapshot(derived)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and "quantization_config" not in config
    assert repo.verify([derived]) == []

    client = MlflowClient(settings.tracking_uri)
    [version] = client.search_model_versions("name = 'gemma3-270m-hf'")
    assert version.tags["sutazai.parent"] == "gemma3-270m:1"
    assert version.tags["sutazai.format"] == "safetensors"

    started = time.monotonic()
    again, created_again = convert_to_safetensors(settings, parent)
    assert not created_again and again == derived
    assert time.monotonic() - started < 5  # found, not converted again


def test_what_cannot_be_converted_says_why(settings: Settings, tmp_path: Path,
                                           gemma_gguf: Path) -> None:
    settings.catalog.write_text(yaml.safe_dump({"models": [
        {**gemma_entry(gemma_gguf), "name": "not-gguf", "format": "spacy", "sha256": None}]}))
    assert mirror_catalog(settings, register=False)[0].error is None
    with pytest.raises(ConversionError, match="only GGUF versions are converted"):
        convert_to_safetensors(settings, open_repository(settings).get("not-gguf"))
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "x").write_text("x")
    with pytest.raises(ConversionError, match="not an empty folder"):
        convert_gguf_to_hf(gemma_gguf, tmp_path / "occupied")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ConversionError, match=r"cannot convert fake\.gguf"):
        convert_gguf_to_hf(fake, tmp_path / "out")
    assert not (tmp_path / "out").exists()
