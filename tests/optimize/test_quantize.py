"""Quantised variants with lineage: the HF -> GGUF converter proven against llama.cpp on the real
Gemma 3 270M, llama.cpp quantisation accepted or rejected on measured quality, publication,
MLflow records, idempotence, bad input, and torch int8-dynamic on a tiny Llama.

The Gemma tests share one repository (module fixture): the GGUF -> HF conversion (~40 s)
happens once and every variant is made from it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from sutazai.config import Settings
from sutazai.errors import ConversionError, OptimizationError
from sutazai.optimize.derive import publish_derived
from sutazai.optimize.hf_to_gguf import convert_hf_to_gguf, permute_qk
from sutazai.optimize.variants import optimize_model, variant_path
from sutazai.repository import open_repository
from sutazai.repository.manifest import Manifest
from sutazai.workflows.mirror import mirror_catalog
from tests.conftest import gemma_entry
from tests.tiny_llama import make_tiny_llama


@pytest.fixture(scope="module")
def gemma_home(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path
               ) -> Iterator[Settings]:
    """A repository holding the Gemma GGUF, shared by the module's Gemma tests."""
    home = tmp_path_factory.mktemp("optimize")
    settings = Settings(home=home / ".sutazai", catalog=home / "catalog.yaml")
    settings.catalog.write_text(yaml.safe_dump({"models": [gemma_entry(gemma_gguf)]}))
    assert mirror_catalog(settings)[0].error is None
    yield settings


def _gemma(settings: Settings) -> Manifest:
    return open_repository(settings).get("gemma3-270m")


def _runs(settings: Settings, method: str) -> list[dict[str, str]]:
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.learning_experiment)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`sutazai.method` = '{method}'")
    return [dict(r.data.tags) | {"name": r.info.run_name} for r in runs]


@pytest.mark.slow
def test_f16_gguf_written_from_hf_reproduces_the_original(gemma_home: Settings,
                                                          gemma_gguf: Path) -> None:
    """The converter's proof: GGUF -> HF -> F16 GGUF holds the original's tensors (to the
    bf16 rounding of the HF copy) and llama.cpp's perplexity of it matches the original's."""
    import gguf

    result = optimize_model(gemma_home, _gemma(gemma_home), "gguf:f16")
    assert result.accepted and result.variant is not None
    # the original runs Q4_K_M kernels (activations quantised to 8 bits), F16 does not
    assert result.quality_drop is not None and abs(result.quality_drop) < 0.02
    assert result.after["mc_accuracy"] == pytest.approx(result.before["mc_accuracy"], abs=0.1)

    original = {t.name: t for t in gguf.GGUFReader(str(gemma_gguf)).tensors}
    written = gguf.GGUFReader(str(variant_path(gemma_home, result.variant)))
    assert int(written.fields["general.file_type"].contents()) == 1  # MOSTLY_F16
    assert written.fields["tokenizer.ggml.tokens"].contents()[:5] == \
        gguf.GGUFReader(str(gemma_gguf)).fields["tokenizer.ggml.tokens"].contents()[:5]
    for tensor in written.tensors:
        if tensor.name not in ("blk.0.attn_norm.weight", "blk.3.attn_q.weight",
                               "blk.17.ffn_down.weight", "output_norm.weight"):
            continue
        source = original[tensor.name]
        expected = gguf.quants.dequantize(source.data, source.tensor_type)
        got = np.asarray(tensor.data, dtype=np.float32).reshape(expected.shape)
        # Gemma norms are stored as 1 + w: a missing +1 would be off by exactly 1
        np.testing.assert_allclose(got, expected, rtol=1e-2, atol=2e-3)


@pytest.mark.slow
def test_q8_0_variant_is_smaller_accepted_published_and_made_once(gemma_home: Settings) -> None:
    parent = _gemma(gemma_home)
    result = optimize_model(gemma_home, parent, "gguf:q8_0")
    assert result.accepted, result.reason
    variant = result.variant
    assert variant is not None and variant.name == "gemma3-270m-q8_0"
    assert (variant.parent, variant.source, variant.revision, variant.format) == (
        parent.ref, f"quantize:{parent.ref}:gguf:q8_0", parent.digest, "gguf")
    assert result.quality_drop is not None and result.quality_drop <= 0.05
    size = variant_path(gemma_home, variant).stat().st_size
    assert size == result.after["size_bytes"]
    f16 = open_repository(gemma_home).latest("gemma3-270m-f16")
    if f16 is not None:  # the F16 test ran first
        assert size < 0.6 * f16.size
    assert result.after["tokens_per_s"] > 0

    # llama.cpp loads it and it generates
    from llama_cpp import Llama

    model = Llama(str(variant_path(gemma_home, variant)), n_ctx=128, verbose=False)
    assert model.create_completion("The capital of France is", max_tokens=4,
                                   temperature=0.0)["usage"]["completion_tokens"] > 0
    model.close()

    client = MlflowClient(gemma_home.tracking_uri)
    [registered] = client.search_model_versions("name = 'gemma3-270m-q8_0'")
    assert registered.tags["sutazai.parent"] == parent.ref
    [run] = _runs(gemma_home, "gguf:q8_0")
    assert run["name"] == f"optimize {parent.ref} gguf:q8_0"
    assert run["sutazai.accepted"] == "true" and run["sutazai.variant"] == variant.ref

    started = time.monotonic()
    again = optimize_model(gemma_home, parent, "gguf:q8_0")
    assert time.monotonic() - started < 5
    assert again.reused and again.variant == variant and again.run_id == result.run_id
    assert again.after == result.after
    assert len(open_repository(gemma_home).versions("gemma3-270m-q8_0")) == 1


@pytest.mark.slow
def test_q2_k_loses_too_much_and_is_rejected_unpublished(gemma_home: Settings) -> None:
    result = optimize_model(gemma_home, _gemma(gemma_home), "gguf:q2_k")
    assert not result.accepted and result.variant is None
    assert result.quality_drop is not None and result.quality_drop > 0.05
    assert result.reason.startswith("rejected") and "not published" in result.reason
    assert result.after["size_bytes"] < result.before["size_bytes"]
    assert open_repository(gemma_home).versions("gemma3-270m-q2_k") == []
    [run] = _runs(gemma_home, "gguf:q2_k")
    assert run["sutazai.accepted"] == "false" and run["sutazai.reason"] == result.reason


@pytest.mark.slow
def test_cli_prints_the_before_after_table(gemma_home: Settings,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from sutazai.cli.optimize import app

    monkeypatch.setenv("SUTAZAI_HOME", str(gemma_home.home))
    optimize_model(gemma_home, _gemma(gemma_home), "gguf:q8_0")  # made once, or found
    out = CliRunner().invoke(app, ["gemma3-270m:1", "--method", "gguf:q8_0"],
                             env={"COLUMNS": "160"})
    assert out.exit_code == 0, out.output
    for text in ("perplexity", "MC accuracy", "tokens/s", "size", "quality drop",
                 "already published as gemma3-270m-q8_0:1", "parent gemma3-270m:1"):
        assert text in out.output
    as_json = CliRunner().invoke(app, ["gemma3-270m", "-m", "gguf:q8_0", "--json"])
    assert '"accepted": true' in as_json.output


def _publish(settings: Settings, folder: Path, name: str, fmt: str,
             tasks: list[str] | None = None) -> Manifest:
    manifest, _ = publish_derived(settings, folder, name=name, parent=None, source="test:x",
                                  revision="0", format=fmt, description="test",
                                  tasks=tasks or ["text-generation"], register=False)
    return manifest


def test_bad_input_says_what_to_do(settings: Settings, tmp_path: Path) -> None:
    llama = _publish(settings, make_tiny_llama(tmp_path / "llama"), "tiny-llama", "safetensors")
    with pytest.raises(OptimizationError, match="unknown optimisation method 'gguf:q9'"):
        optimize_model(settings, llama, "gguf:q9")
    with pytest.raises(OptimizationError, match=r"no GGUF ancestor.*int8-dynamic"):
        optimize_model(settings, llama, "gguf:q8_0")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "m.gguf").write_bytes(b"GGUF")
    fake = _publish(settings, tmp_path / "fake", "fake-gguf", "gguf")
    with pytest.raises(OptimizationError, match="int8-dynamic quantises Hugging Face"):
        optimize_model(settings, fake, "int8-dynamic")
    spacy = _publish(settings, tmp_path / "fake", "ner-model", "spacy", tasks=["ner"])
    with pytest.raises(OptimizationError, match="only text-generation models"):
        optimize_model(settings, spacy, "gguf:q8_0")


def test_converter_refuses_a_template_of_another_model(tmp_path: Path, gemma_gguf: Path) -> None:
    llama = make_tiny_llama(tmp_path / "llama")
    with pytest.raises(ConversionError, match=r"template .* is a gemma3 GGUF, the model is llama"):
        convert_hf_to_gguf(llama, gemma_gguf, tmp_path / "out.gguf")
    assert not list(tmp_path.glob("out.gguf*"))


def test_llama_qk_permutation_inverts_the_transformers_loader() -> None:
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rng = np.random.default_rng(0)
    for heads, kv in ((4, 4), (4, 2)):
        rows = (heads if kv == heads else kv) * 8
        weights = rng.standard_normal((rows, 16)).astype(np.float32)
        back = LlamaTensorProcessor()._reverse_permute_weights(permute_qk(weights, heads, kv),
                                                              heads, kv)
        np.testing.assert_array_equal(back, weights)


def test_int8_dynamic_on_tiny_llama_is_measured_not_stored(settings: Settings,
                                                           tmp_path: Path) -> None:
    llama = _publish(settings, make_tiny_llama(tmp_path / "llama"), "tiny-llama", "safetensors")
    result = optimize_model(settings, llama, "int8-dynamic")
    assert result.variant is None and "evaluated only" in result.reason
    assert set(result.before) == set(result.after) == {"size_bytes", "tokens_per_s",
                                                       "perplexity", "mc_accuracy"}
    # float32 -> int8 Linear weights: the serialised model shrinks
    assert result.after["size_bytes"] < 0.6 * result.before["size_bytes"]
    assert result.quality_drop is not None and abs(result.quality_drop) < 0.05
    assert result.accepted
    [run] = _runs(settings, "int8-dynamic")
    assert run["sutazai.accepted"] == "true" and run["sutazai.variant"] == ""
