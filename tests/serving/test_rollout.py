"""The serving layer's part in self-improvement, on the real Gemma 3 270M served by llama.cpp:
a new champion replaces the served one with no failed request, a broken one is skipped, and
opt-in request logging feeds the learning data store with ratings from /v1/feedback."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from sutazai.config import Settings
from sutazai.learning.datastore import FeedbackStore
from sutazai.optimize.derive import publish_derived
from sutazai.registry import open_registry
from sutazai.registry.task_aliases import CHAMPION, TaskAliases
from sutazai.repository import open_repository
from sutazai.repository.manifest import Manifest
from sutazai.serving.engines import start_engine
from sutazai.serving.gateway import INTERACTION_HEADER, GatewayThread, create_app
from sutazai.serving.process import free_port
from sutazai.serving.rollout import ChampionWatcher
from tests.benchmark.test_benchmark_run import publish

pytestmark = pytest.mark.slow
TASK = "text-generation"


def copy_of(settings: Settings, base: Manifest, name: str, folder: Path | None = None
            ) -> Manifest:
    source = folder or open_repository(settings).ensure_snapshot(base)
    made, _ = publish_derived(settings, source, name=name, parent=base,
                              source=f"derived:{base.ref}", revision=base.digest, format="gguf",
                              description="a copy for the rollout test")
    return made


def test_a_new_champion_is_served_without_a_failed_request(
    settings: Settings, gemma_gguf: Path, tmp_path: Path
) -> None:
    publish(settings, gemma_gguf, "gemma3-270m")
    base = open_repository(settings).get("gemma3-270m")
    successor = copy_of(settings, base, "gemma3-270m-next")
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    (broken_dir / "model.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    broken = copy_of(settings, base, "gemma3-270m-broken", broken_dir)
    aliases = TaskAliases(open_registry(settings))
    aliases.set(TASK, CHAMPION, base, "llamacpp", 1)

    first = start_engine(settings, base, "llamacpp")
    app = create_app(first, owns_engine=True)
    statuses: list[int] = []
    stop = threading.Event()
    with GatewayThread(app, "127.0.0.1", free_port()) as gateway:
        def traffic() -> None:
            with httpx.Client(base_url=gateway.url, timeout=120) as client:
                while not stop.is_set():
                    answer = client.post("/v1/completions", json={
                        "prompt": "The sky is", "max_tokens": 4, "temperature": 0})
                    statuses.append(answer.status_code)

        sender = threading.Thread(target=traffic)
        sender.start()
        watcher = ChampionWatcher(settings, app.state.gateway, TASK,
                                  (base.name, base.version, "llamacpp"), interval_s=3600)
        try:
            assert not watcher.check()  # nothing changed yet
            while len(statuses) < 2:
                stop.wait(0.05)
            before = len(statuses)
            aliases.set(TASK, CHAMPION, successor, "llamacpp", 1)
            assert watcher.check()
            assert httpx.get(f"{gateway.url}/health").json()["version"] == successor.ref
            after_swap = len(statuses)
            while len(statuses) < after_swap + 3:
                stop.wait(0.1)

            aliases.set(TASK, CHAMPION, broken, "llamacpp", 1)
            assert not watcher.check() and watcher.skipped == (broken.name, 1, "llamacpp")
            assert not watcher.check()  # a known-bad champion is not retried every poll
            assert httpx.get(f"{gateway.url}/health").json()["version"] == successor.ref
            metrics = httpx.get(f"{gateway.url}/metrics").text
        finally:
            stop.set()
            sender.join(120)
    assert before > 0 and after_swap > before and set(statuses) == {200}, statuses
    assert not first.alive()  # the old engine was stopped once its requests were done
    assert "sutazai_model_swaps_total 1.0" in metrics
    [info] = [line for line in metrics.splitlines() if line.startswith("sutazai_model_info{")]
    assert f'model="{successor.name}"' in info  # the old one's info series is gone
    # requests are labelled with the model that answered them, before and after the swap
    assert f'endpoint="completions",model="{base.name}"' in metrics
    assert f'endpoint="completions",model="{successor.name}"' in metrics


def test_request_logging_feeds_the_store_and_ratings_reach_it(
    settings: Settings, gemma_gguf: Path
) -> None:
    publish(settings, gemma_gguf, "gemma3-270m")
    base = open_repository(settings).get("gemma3-270m")
    store = FeedbackStore.open(settings)
    engine = start_engine(settings, base, "llamacpp")
    with GatewayThread(create_app(engine, owns_engine=True, feedback=store), "127.0.0.1",
                       free_port()) as gateway, httpx.Client(base_url=gateway.url,
                                                             timeout=120) as client:
        answer = client.post("/v1/completions", json={
            "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0})
        assert answer.status_code == 200
        interaction = int(answer.headers[INTERACTION_HEADER])
        streamed = client.post("/v1/completions", json={
            "prompt": "One, two,", "max_tokens": 4, "temperature": 0, "stream": True})
        assert streamed.status_code == 200 and "[DONE]" in streamed.text

        rated = client.post("/v1/feedback", json={"id": interaction, "rating": 1,
                                                   "label": "good"})
        assert rated.status_code == 200, rated.text
        unknown = client.post("/v1/feedback", json={"id": 999_999, "rating": 1})
        message = unknown.json()["error"]["message"]
        assert unknown.status_code == 404 and "999999" in message
        assert "sqlite" not in message and str(settings.home) not in message  # where it looked
        malformed = client.post("/v1/feedback", json={"rating": "great"})
        assert malformed.status_code == 400

    row = store.get(interaction)
    assert row["prompt"] == "The capital of France is"
    assert row["response"] == answer.json()["choices"][0]["text"]
    assert row["rating"] == 1 and row["label"] == "good" and row["source"] == "serving"
    assert row["model"] == base.ref
    assert store.count() == 2  # the streamed completion was logged too
    stream_row = max((r for r in store.rows()), key=lambda r: r["id"])
    assert stream_row["prompt"] == "One, two," and stream_row["response"].strip()


def test_without_request_logging_the_feedback_endpoint_says_how_to_turn_it_on(
    settings: Settings, gemma_gguf: Path
) -> None:
    publish(settings, gemma_gguf, "gemma3-270m")
    engine = start_engine(settings, open_repository(settings).get("gemma3-270m"), "llamacpp")
    with GatewayThread(create_app(engine, owns_engine=True), "127.0.0.1",
                       free_port()) as gateway:
        answer = httpx.post(f"{gateway.url}/v1/feedback", json={"id": 1, "rating": 1})
    assert answer.status_code == 404
    assert "SUTAZAI_REQUEST_LOGGING=true" in answer.json()["error"]["message"]
