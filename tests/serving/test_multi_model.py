"""Many models behind one endpoint, on real llama.cpp servers: the real Gemma 3 270M GGUF
published under three names (one blob in the repository, three models to the router),
routed by the request's ``model``, loaded on the first request, evicted least recently
used first under a memory budget, and never evicted while a request is in flight."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import yaml

from sutazai.config import Settings
from sutazai.errors import NotFoundError
from sutazai.optimize.derive import publish_derived
from sutazai.registry import open_registry
from sutazai.repository import open_repository
from sutazai.security.audit import open_audit_log
from sutazai.serving.multi import MIB, ModelRouter, estimate_bytes
from sutazai.serving.service import Target, resolve_targets, serving_many
from sutazai.workflows.mirror import mirror_catalog
from tests.conftest import gemma_entry
from tests.serving.test_serving import engine_processes, metric

pytestmark = pytest.mark.slow
NAMES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path) -> Settings:
    """Gemma as alpha, beta and gamma (registered: beta@prod is an MLflow alias), plus a
    "broken" model whose GGUF llama.cpp cannot read."""
    root = tmp_path_factory.mktemp("multi")
    settings = Settings(home=root / ".sutazai", catalog=root / "catalog.yaml",
                        engine_wait_s=60.0, serve_load_wait_s=60.0, serve_memory_budget_mib=0)
    settings.catalog.write_text(yaml.safe_dump(
        {"models": [gemma_entry(gemma_gguf, name) for name in NAMES]}))
    assert all(outcome.error is None for outcome in mirror_catalog(settings))
    repo = open_repository(settings)
    registry = open_registry(settings)
    found = registry.find(repo.get("beta"))
    assert found is not None
    registry.client.set_registered_model_alias("beta", "prod", str(found.version))
    broken = root / "broken"
    broken.mkdir()
    (broken / "model.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    publish_derived(settings, broken, name="broken", parent=repo.get("alpha"),
                    source="derived:alpha:1", revision="x", format="gguf",
                    description="not a model llama.cpp can read", register=False)
    return settings


def targets(settings: Settings, *names: str) -> list[Target]:
    return resolve_targets(settings, list(names))


def budget(settings: Settings, models: float, **changes: float) -> Settings:
    """Settings whose memory budget holds ``models`` Gemma engines (1.5: one, not two)."""
    one = estimate_bytes(settings, open_repository(settings).get("alpha"), "llamacpp")
    return settings.model_copy(update={
        "serve_memory_budget_mib": int(one * models / MIB), **changes})


def complete(url: str, model: str, max_tokens: int = 2) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", timeout=120, json={
        "model": model, "prompt": "Count: 1, 2,", "max_tokens": max_tokens, "temperature": 0})


def loaded(url: str) -> dict[str, bool]:
    return {m["id"]: m["loaded"] for m in httpx.get(f"{url}/v1/models").json()["data"]}


def engine_pids(router: ModelRouter) -> dict[str, int]:
    """The engine process of each loaded model (each alive)."""
    found = {}
    for model in router.models:
        if model.gateway is not None:
            process = model.gateway.engine.process
            assert process is not None and process.process is not None and process.alive()
            found[model.key] = process.process.pid
    return found


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def audited(settings: Settings, action: str) -> list[tuple[str, str, dict[str, object]]]:
    return [(r.target, r.result, r.details) for r in open_audit_log(settings).records()
            if r.action == action]


@pytest.fixture(scope="module")
def wide(home: Settings) -> Iterator[tuple[ModelRouter, str]]:
    """alpha, beta and broken, no memory limit, healing on as under ``sutazai serve``."""
    with serving_many(home, targets(home, "alpha", "beta", "broken"), heal=True) as served:
        yield served


def test_models_are_listed_and_load_on_their_first_request_by_any_name(
    wide: tuple[ModelRouter, str], home: Settings
) -> None:
    _, url = wide
    assert loaded(url) == {"alpha": False, "beta": False, "broken": False}
    assert engine_processes(home.home) == []  # listed, none started

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["alpha", "beta", "broken"]
    first = client.completions.create(model="alpha", prompt="The capital of France is",
                                      max_tokens=4, temperature=0)
    assert first.model == "alpha" and first.choices[0].text
    assert loaded(url) == {"alpha": True, "beta": False, "broken": False}
    for asked in ("beta", "beta:1", "beta@prod"):  # name, name:version, MLflow alias
        reply = client.completions.create(model=asked, prompt="The capital of France is",
                                          max_tokens=4, temperature=0)
        assert reply.model == "beta", asked
        assert reply.choices[0].text == first.choices[0].text  # the same weights, greedy
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="beta", prompt="The capital of France is", max_tokens=4, temperature=0,
        stream=True) if c.choices)
    assert streamed == first.choices[0].text
    assert loaded(url) == {"alpha": True, "beta": True, "broken": False}
    assert len(engine_processes(home.home)) == 2  # one engine per model, loaded once

    metrics = httpx.get(f"{url}/metrics").text
    assert 'sutazai_request_duration_seconds_count{endpoint="completions",model="alpha"} ' \
           '1.0' in metrics
    assert 'sutazai_request_duration_seconds_count{endpoint="completions",model="beta"} ' \
           '4.0' in metrics
    assert 'sutazai_time_to_first_token_seconds_count{endpoint="completions",model="beta"} ' \
           '1.0' in metrics
    assert metric(url, 'sutazai_model_loads_total{model="alpha",outcome="ok"}') == 1.0
    assert metric(url, 'sutazai_model_loads_total{model="beta",outcome="ok"}') == 1.0
    assert metric(url, "sutazai_models_loaded") == 2.0
    loads = audited(home, "model.load")
    assert [(target, result) for target, result, _ in loads] == [("alpha:1", "ok"),
                                                                  ("beta:1", "ok")]
    assert all(details["budget_bytes"] is None for _, _, details in loads)


def test_unknown_models_get_an_openai_404_naming_what_is_served(
    wide: tuple[ModelRouter, str]
) -> None:
    _, url = wide
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    for asked, expected in (("gpt-4o", "not served here"), ("alpha:7", "not served here"),
                            ("beta@nope", "beta has no alias 'nope'")):
        with pytest.raises(openai.NotFoundError, match=expected) as raised:
            client.completions.create(model=asked, prompt="hi", max_tokens=1)
        assert "alpha, beta, broken" in str(raised.value)
        assert raised.value.code == "model_not_found"
    missing = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 1})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "model_required"
    assert metric(url, 'sutazai_requests_total{endpoint="completions",model="",'
                       'status="404"}') == 3.0


def test_a_model_that_cannot_load_is_one_clear_line(wide: tuple[ModelRouter, str],
                                                    home: Settings) -> None:
    _, url = wide
    answer = complete(url, "broken")
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert error["code"] == "model_load_failed" and answer.headers["x-should-retry"] == "false"
    assert "model broken could not be loaded: model.gguf is not a GGUF file llama.cpp can " \
           "read" in error["message"]
    assert "\n" not in error["message"] and "Traceback" not in answer.text
    again = complete(url, "broken")  # held for a moment: no second load per request
    assert again.json()["error"]["message"] == error["message"]
    assert metric(url, 'sutazai_model_loads_total{model="broken",outcome="failed"}') == 1.0
    assert [r for t, r, _ in audited(home, "model.load") if t == "broken:1"] == ["error"]
    assert complete(url, "alpha").status_code == 200  # the others serve on


def test_each_engine_heals_on_its_own(wide: tuple[ModelRouter, str], home: Settings) -> None:
    """SIGKILL alpha's engine: a request to it waits for the restart; beta never notices."""
    router, url = wide
    assert complete(url, "alpha").status_code == 200
    [alpha] = [m for m in router.models if m.key == "alpha"]
    assert alpha.gateway is not None
    engine = alpha.gateway.engine
    assert engine.process is not None and engine.process.process is not None
    os.kill(engine.process.process.pid, signal.SIGKILL)
    assert complete(url, "beta").status_code == 200
    healed = complete(url, "alpha")
    assert healed.status_code == 200, healed.text
    assert alpha.gateway is not None and alpha.gateway.restarts == 1
    assert metric(url, 'sutazai_engine_restarts_total{outcome="ok"}') == 1.0
    assert metric(url, "sutazai_engine_up") == 1.0
    assert metric(url, 'sutazai_model_loads_total{model="alpha",outcome="ok"}') == 1.0
    assert httpx.get(f"{url}/health/ready").status_code == 200


def test_the_least_recently_used_idle_model_is_evicted(home: Settings) -> None:
    """A budget for two of three: the model used longest ago goes, the one used last stays."""
    settings = budget(home, 2.5)
    with serving_many(settings, targets(settings, *NAMES)) as (router, url):
        for name in ("alpha", "beta", "alpha"):
            assert complete(url, name).status_code == 200, name
        before = engine_pids(router)
        assert set(before) == {"alpha", "beta"}
        assert complete(url, "gamma").status_code == 200  # beta is the least recently used
        assert loaded(url) == {"alpha": True, "beta": False, "gamma": True}
        assert metric(url, 'sutazai_model_evictions_total{model="beta"}') == 1.0
        assert metric(url, "sutazai_models_loaded") == 2.0
        after = engine_pids(router)
        assert gone(before["beta"]) and after["alpha"] == before["alpha"]
        [(target, _, details)] = audited(settings, "model.evict")
        assert target == "beta:1" and details["for"] == "gamma:1"
        assert isinstance(details["peak_rss_bytes"], int) and details["peak_rss_bytes"] > 0
        assert router.resident_bytes() <= router.budget_bytes


def test_an_engine_in_use_is_never_evicted(home: Settings) -> None:
    """A budget of one model: beta streams a long answer while alpha is asked for. alpha
    waits (serve_load_wait_s, then a 503 with Retry-After); beta's stream completes."""
    settings = budget(home, 1.5)
    with serving_many(settings, targets(settings, "alpha", "beta")) as (router, url):
        assert complete(url, "alpha").status_code == 200
        assert complete(url, "beta").status_code == 200  # alpha was idle: evicted
        assert loaded(url) == {"alpha": False, "beta": True}
        router.load_wait_s = 1.5

        def long_stream(lines: list[str], first: threading.Event) -> None:
            body = {"model": "beta", "prompt": "Count: 1, 2, 3,", "max_tokens": 120,
                    "temperature": 0, "stream": True, "ignore_eos": True}
            with httpx.stream("POST", f"{url}/v1/completions", json=body,
                              timeout=120) as answer:
                assert answer.status_code == 200
                for line in answer.iter_lines():
                    lines.append(line)
                    if '"text"' in line:
                        first.set()
            lines.append(f"ended {time.monotonic()}")

        lines: list[str] = []
        first = threading.Event()
        streaming = threading.Thread(target=long_stream, args=(lines, first))
        streaming.start()
        assert first.wait(60)
        started = time.monotonic()
        refused = complete(url, "alpha")
        waited = time.monotonic() - started
        assert streaming.is_alive(), "the stream ended before the wait: make it longer"
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["code"] == "model_loading" and "waiting for memory" in error["message"]
        assert "serve_load_wait_s" in error["message"]
        assert int(refused.headers["retry-after"]) >= 1
        assert 1.4 <= waited < 10
        beta_pid = engine_pids(router)["beta"]
        assert loaded(url) == {"alpha": False, "beta": True}

        # a longer wait: alpha's request is answered once beta's stream is done
        router.load_wait_s = 60.0
        replies: list[tuple[float, httpx.Response]] = []
        waiting = threading.Thread(
            target=lambda: replies.append((0.0, complete(url, "alpha"))))
        waiting.start()
        streaming.join(120)
        waiting.join(120)
        events = [json.loads(line[5:]) for line in lines
                  if line.startswith("data:") and line[5:].strip() != "[DONE]"]
        assert "data: [DONE]" in lines and all("choices" in e for e in events)
        assert sum(bool(e["choices"][0]["text"]) for e in events) >= 60  # not cut short
        assert replies and replies[0][1].status_code == 200, replies
        assert loaded(url) == {"alpha": True, "beta": False} and gone(beta_pid)
        assert metric(url, 'sutazai_model_evictions_total{model="beta"}') == 1.0
        assert metric(url, 'sutazai_requests_total{endpoint="completions",model="beta",'
                           'status="200"}') == 2.0
        assert metric(url, 'sutazai_requests_total{endpoint="completions",model="",'
                           'status="503"}') == 1.0


def test_a_budget_too_small_for_the_model_is_a_clear_error(home: Settings) -> None:
    settings = budget(home, 0.5)
    with serving_many(settings, targets(settings, "alpha", "beta")) as (_, url):
        answer = complete(url, "alpha")
        assert answer.status_code == 507, answer.text
        error = answer.json()["error"]
        assert error["code"] == "model_too_large" and "\n" not in error["message"]
        assert "memory budget" in error["message"] and "serve_memory_budget_mib" in \
            error["message"]
        assert answer.headers["x-should-retry"] == "false"
        assert loaded(url) == {"alpha": False, "beta": False}
        assert metric(url, 'sutazai_model_loads_total{model="alpha",outcome="failed"}') == 1.0


def test_an_unknown_name_fails_before_anything_serves(home: Settings) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        resolve_targets(home, ["alpha", "nope"])
    env = {**os.environ, "SUTAZAI_HOME": str(home.home), "SUTAZAI_CATALOG": str(home.catalog)}
    import subprocess

    done = subprocess.run([sys.executable, "-m", "sutazai.cli.main", "serve", "alpha", "nope",
                           "--port", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert "nope" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 3
    both = subprocess.run([sys.executable, "-m", "sutazai.cli.main", "serve", "alpha",
                           "--champions"], capture_output=True, text=True, env=env, timeout=120)
    assert both.returncode == 1 and "not both" in both.stderr


def test_champions_are_every_task_champion_as_the_aliases_say(home: Settings) -> None:
    """--champions serves each task's champion (not its challenger), resolved from the one
    alias reading every view shares; the task names it as well as its model name."""
    from sutazai.registry.task_aliases import TaskAliases

    repo = open_repository(home)
    aliases = TaskAliases(open_registry(home))
    aliases.set("text-generation", "champion", repo.get("alpha"), "llamacpp", 2)
    aliases.set("text-generation", "challenger", repo.get("beta"), "llamacpp", 1)
    aliases.set("chat", "champion", repo.get("gamma"), "llamacpp", 1)
    try:
        targets = resolve_targets(home, [], champions=True)
        assert [(t.task, t.manifest.name, t.engine, t.concurrency) for t in targets] == [
            ("chat", "gamma", "llamacpp", 1), ("text-generation", "alpha", "llamacpp", 2)]
    finally:
        for task in ("text-generation", "chat"):
            aliases.clear(task, "champion")
        aliases.clear("text-generation", "challenger")
