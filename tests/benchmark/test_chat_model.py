"""The chat model on real engines: SmolLM2-135M-Instruct (GGUF, its own chat template) on
llama.cpp, its derived safetensors version on vLLM, chat quality, bits per byte across two
tokenizers, and selection of the chat task next to text generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from sutazai.benchmark.metrics import SLO
from sutazai.benchmark.profiles import LoadProfile
from sutazai.benchmark.quality import (
    LlamaCppScorer,
    _answered,
    text_generation_quality,
)
from sutazai.benchmark.runner import benchmark
from sutazai.config import Settings
from sutazai.optimize.derive import convert_to_safetensors
from sutazai.repository import open_repository
from sutazai.selection.rules import Weights
from sutazai.selection.store import latest_summaries, select_and_promote
from sutazai.serving.engines import VllmEngine
from sutazai.serving.service import resolve_targets, serving, serving_many
from sutazai.workflows.mirror import mirror_catalog
from tests.conftest import gemma_entry, smollm2_entry


def chat(client: openai.OpenAI, model: str, question: str, *, stream: bool = False,
         max_tokens: int = 16) -> str:
    """The reply to one user message, greedy, plain or streamed (joined)."""
    messages: list[Any] = [{"role": "user", "content": question}]
    if not stream:
        reply = client.chat.completions.create(model=model, messages=messages,
                                               max_tokens=max_tokens, temperature=0)
        return reply.choices[0].message.content or ""
    chunks = client.chat.completions.create(model=model, messages=messages,
                                            max_tokens=max_tokens, temperature=0, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


QUICK = LoadProfile(name="quick", mode="concurrency", concurrency=1, num_prompts=3,
                    output_tokens=8, warmup=1)


@pytest.mark.parametrize(("reply", "answers", "match", "right"), [
    ("The chemical symbol for gold is Au.", ["Au"], "contains", True),
    ("Australia is far away.", ["Au"], "contains", False),  # whole words only
    ("PARIS, of course", ["Paris"], "contains", True),
    ("Yes.", ["yes"], "exact", True),
    ("Yes, the Sun is a star.", ["yes"], "exact", False),
    (" 24\n", ["24"], "exact", True),
])
def test_chat_answers_are_matched_as_the_data_says(reply: str, answers: list[str], match: str,
                                                   right: bool) -> None:
    assert _answered(reply, answers, match) is right


def test_bits_per_byte_scores_the_same_bytes_whatever_the_tokenizer(
    settings: Settings, gemma_gguf: Path, smollm2_gguf: Path
) -> None:
    """Gemma (262k-token vocabulary) and SmolLM2 (49k) split the held-out text into different
    numbers of tokens, so per-token perplexity cannot rank them; bits per byte can."""
    reports = {}
    for name, gguf in (("gemma", gemma_gguf), ("smollm2", smollm2_gguf)):
        scorer = LlamaCppScorer(gguf, threads=2)
        try:
            reports[name] = text_generation_quality(scorer, settings.benchmark_data_dir)
        finally:
            scorer.close()
    gemma, smol = reports["gemma"].scores, reports["smollm2"].scores
    assert gemma["heldout_bytes"] == smol["heldout_bytes"] > 500
    assert gemma["heldout_tokens"] != smol["heldout_tokens"]
    for scores in (gemma, smol):  # real models on plain English: about 1 bit per byte
        assert 0.3 < scores["bits_per_byte"] < 3.0


@pytest.mark.slow
def test_the_chat_model_is_benchmarked_and_selected_for_chat_and_text_generation(
    settings: Settings, smollm2_gguf: Path
) -> None:
    settings.catalog.write_text(yaml.safe_dump({"models": [smollm2_entry(smollm2_gguf)]}))
    assert all(o.error is None for o in mirror_catalog(settings))
    manifest = open_repository(settings).get("smollm2-135m-instruct")

    with serving(settings, manifest) as (running, url):
        assert running.engine == "llamacpp" and "chat" in running.capabilities
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        assert "5" in chat(client, running.model, "What is 2 plus 3?")
        assert chat(client, running.model, "Say hello.", stream=True, max_tokens=8).strip()

    summary, _ = benchmark(settings, manifest, "llamacpp", QUICK, SLO(ttft_p95_ms=10_000))
    assert summary.tasks == ["text-generation", "chat"]
    assert summary.quality is not None
    scores = summary.quality.scores
    # SmolLM2 answers about half of the set right on this CPU; a broken template, none.
    assert 0.2 <= scores["chat_accuracy"] <= 0.9 and scores["chat_prompts"] >= 20
    assert summary.quality.score_for("chat") == scores["chat_accuracy"]
    assert summary.quality.score_for("text-generation") == scores["mc_accuracy"]
    assert any(d.get("task") == "chat" and d["reply"] for d in summary.quality.details)

    [found] = latest_summaries(settings, "chat", "quick")
    assert found.run_id == summary.run_id
    assert [s.run_id for s in latest_summaries(settings, "text-generation", "quick")] == [
        summary.run_id]
    decision, _ = select_and_promote(settings, "chat", "quick", SLO(ttft_p95_ms=10_000),
                                     Weights())
    assert decision.winner is not None and decision.winner.model == "smollm2-135m-instruct"
    assert decision.winner.quality == scores["chat_accuracy"]


@pytest.mark.slow
def test_a_base_model_is_not_benchmarked_for_chat(settings: Settings, gemma_gguf: Path) -> None:
    """Gemma 3 270M has no chat template: its run measures text generation only, even when
    the catalog claims chat, and the chat selection finds nothing of it."""
    entry = {**gemma_entry(gemma_gguf), "tasks": ["text-generation", "chat"]}
    settings.catalog.write_text(yaml.safe_dump({"models": [entry]}))
    assert all(o.error is None for o in mirror_catalog(settings))
    manifest = open_repository(settings).get("gemma3-270m")
    summary, _ = benchmark(settings, manifest, "llamacpp", QUICK, SLO(), quality=False)
    assert summary.tasks == ["text-generation"]
    assert latest_summaries(settings, "chat", "quick") == []


@pytest.mark.slow
def test_the_derived_chat_model_chats_on_vllm_with_its_own_template(
    settings: Settings, smollm2_gguf: Path
) -> None:
    if not VllmEngine(settings).installed:
        pytest.fail("vLLM's venv is missing: run make vllm")
    settings.catalog.write_text(yaml.safe_dump({"models": [smollm2_entry(smollm2_gguf)]}))
    assert all(o.error is None for o in mirror_catalog(settings, register=False))
    derived, created = convert_to_safetensors(
        settings, open_repository(settings).get("smollm2-135m-instruct"), register=False)
    assert created and derived.name == "smollm2-135m-instruct-hf"
    assert "chat_template.jinja" in {f.path for f in derived.files}
    with serving(settings, derived, "vllm") as (running, url):
        assert running.capabilities == {"completions", "chat"}
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        assert "5" in chat(client, running.model, "What is 2 plus 3?")
        assert "Tokyo" in chat(client, running.model, "What is the capital of Japan?",
                               stream=True)


@pytest.mark.slow
def test_one_endpoint_serves_the_chat_model_and_both_generation_models(
    settings: Settings, gemma_gguf: Path, smollm2_gguf: Path
) -> None:
    """The official openai client against one multi-model `serving_many` endpoint: chat
    (plain and streamed) on SmolLM2, completions on SmolLM2 and Gemma, and Gemma (no chat
    template) refusing chat with a clear error."""
    settings = settings.model_copy(update={"serve_memory_budget_mib": 0})
    settings.catalog.write_text(yaml.safe_dump({"models": [
        smollm2_entry(smollm2_gguf), gemma_entry(gemma_gguf), gemma_entry(gemma_gguf, "gemma-b")]}))
    assert all(o.error is None for o in mirror_catalog(settings))
    names = ["smollm2-135m-instruct", "gemma3-270m", "gemma-b"]
    with serving_many(settings, resolve_targets(settings, names)) as (_, url):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert {m.id for m in client.models.list().data} == set(names)
        assert "Tokyo" in chat(client, "smollm2-135m-instruct", "What is the capital of Japan?")
        assert chat(client, "smollm2-135m-instruct:1", "Say hello.", stream=True).strip()
        for name in names:
            done = client.completions.create(model=name, prompt="The capital of France is",
                                             max_tokens=4, temperature=0)
            assert done.choices[0].text and done.model.startswith(name.split(":")[0])
        with pytest.raises(openai.BadRequestError, match="chat template"):
            client.chat.completions.create(model="gemma3-270m", max_tokens=4,
                                           messages=[{"role": "user", "content": "hi"}])
