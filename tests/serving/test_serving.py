"""Serving: a real llama.cpp server with the real Gemma 3 GGUF, behind SutazAI's gateway,
driven by the official ``openai`` client; plus the errors users meet first, and how the
gateway reports and heals an engine that is busy, killed, or cannot come back."""

from __future__ import annotations

import json
import os
import signal
import socket
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
from sutazai.errors import BenchmarkError, EngineError, NotFoundError, PortInUseError
from sutazai.repository import open_repository
from sutazai.repository.manifest import Manifest
from sutazai.security.audit import open_audit_log
from sutazai.serving.engines import RunningEngine, engine_for, start_engine
from sutazai.serving.gateway import GatewayThread, create_app
from sutazai.serving.process import free_port
from sutazai.serving.service import resolve_target, serving
from sutazai.serving.supervision import EngineRestart
from sutazai.workflows.mirror import mirror_catalog
from tests.conftest import gemma_entry

pytestmark = pytest.mark.slow


def published_gemma(settings: Settings, gguf: Path, register: bool = False) -> Manifest:
    settings.catalog.write_text(yaml.safe_dump({"models": [gemma_entry(gguf)]}))
    [outcome] = mirror_catalog(settings, register=register)
    assert outcome.error is None, outcome.error
    return open_repository(settings).get("gemma3-270m")


@pytest.fixture(scope="module")
def gemma_home(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path
               ) -> tuple[Settings, Manifest]:
    """One home with Gemma published, shared by the module's engines (one copy of 253 MB)."""
    home = tmp_path_factory.mktemp("serving")
    settings = Settings(home=home / ".sutazai", catalog=home / "catalog.yaml",
                        engine_wait_s=120.0)
    return settings, published_gemma(settings, gemma_gguf)


@pytest.fixture(scope="module")
def served(gemma_home: tuple[Settings, Manifest]) -> Iterator[tuple[RunningEngine, str]]:
    """The gateway heals as under ``sutazai serve``; the kill test leaves it healthy."""
    settings, manifest = gemma_home
    with serving(settings, manifest, heal=True) as running:
        yield running


def test_openai_client_gets_completions_streamed_and_not(
    served: tuple[RunningEngine, str]
) -> None:
    running, url = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["gemma3-270m"]

    done = client.completions.create(model="gemma3-270m", prompt="The capital of France is",
                                     max_tokens=8, temperature=0)
    assert done.choices[0].text.strip()
    assert done.usage is not None and 1 <= done.usage.completion_tokens <= 8

    chunks = list(client.completions.create(
        model="gemma3-270m", prompt="The capital of France is", max_tokens=8, temperature=0,
        stream=True))
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == done.choices[0].text  # greedy: the same text either way

    metrics = httpx.get(f"{url}/metrics").text
    labels = '{endpoint="completions",model="gemma3-270m"}'
    assert f"sutazai_request_duration_seconds_count{labels} 2.0" in metrics
    assert f"sutazai_time_to_first_token_seconds_count{labels} 1.0" in metrics
    assert "sutazai_requests_in_flight 0.0" in metrics
    assert 'sutazai_model_info{digest="' in metrics and 'engine="llamacpp"' in metrics
    tokens = next(line for line in metrics.splitlines()
                  if line.startswith('sutazai_output_tokens_total{endpoint="completions",'
                                  'model="gemma3-270m"}'))
    assert float(tokens.split()[-1]) >= done.usage.completion_tokens + 1
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    assert running.peak_rss_bytes and running.peak_rss_bytes > 200 * 2**20



def test_the_reply_names_the_served_model_never_the_snapshot_path(
    served: tuple[RunningEngine, str]
) -> None:
    """llama.cpp answers a request without "model" with the snapshot's absolute path; the
    gateway names the model for it, also when the caller asked by the version's ref."""
    running, url = served
    for asked in ({}, {"model": running.manifest.ref}):
        body = {"prompt": "Hello", "max_tokens": 2, "temperature": 0, **asked}
        reply = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == "gemma3-270m"
        assert ".sutazai" not in reply.text  # the home, where snapshots live

def test_chat_on_a_base_model_is_refused_with_the_remedy(
    served: tuple[RunningEngine, str]
) -> None:
    """Gemma 3 270M ships no chat template; llama.cpp alone would apply a wrong one."""
    _, url = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    with pytest.raises(openai.BadRequestError, match=r"no chat template.*/v1/completions"):
        client.chat.completions.create(model="gemma3-270m",
                                       messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError, match="serves 'gemma3-270m'"):
        client.completions.create(model="gpt-4o", prompt="hi", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="does not offer /v1/embeddings"):
        client.embeddings.create(model="gemma3-270m", input="hi")


def test_busy_port_fails_before_the_model_loads(settings: Settings, gemma_gguf: Path) -> None:
    manifest = published_gemma(settings, gemma_gguf)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port} .* --port"), \
                serving(settings, manifest, port=port):
            pass
    assert not (settings.home / "serving").exists()  # no engine was started


def test_an_engine_that_cannot_load_the_format_names_one_that_can(
    settings: Settings, gemma_gguf: Path
) -> None:
    gguf = published_gemma(settings, gemma_gguf)
    with pytest.raises(EngineError, match=r"vllm cannot load gemma3-270m:1.*--engine "
                                          "llamacpp or ollama"):
        engine_for(settings, gguf, "vllm")
    spacy = gguf.model_copy(update={"format": "spacy"})
    with pytest.raises(EngineError, match=r"no engine serves gemma3-270m:1 .format 'spacy'"):
        engine_for(settings, spacy)
    with pytest.raises(EngineError, match="unknown engine 'tgi'"):
        engine_for(settings, gguf, "tgi")


def test_vllm_without_its_venv_says_how_to_set_it_up(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"vllm_venv": tmp_path / "no-venv"})
    manifest = Manifest(name="tiny", version=1, digest="0" * 64, source="file:x", revision="x",
                        format="safetensors", tasks=["text-generation"], license="mit",
                        files=[{"path": "config.json", "size": 2, "digest": "1" * 64}])
    with pytest.raises(EngineError, match="make vllm"):
        engine_for(settings, manifest).start(manifest, tmp_path, tmp_path / "work")


def test_unknown_model_and_unset_alias_are_clear(settings: Settings, gemma_gguf: Path) -> None:
    published_gemma(settings, gemma_gguf, register=True)
    with pytest.raises(NotFoundError, match="nope"):
        resolve_target(settings, "nope")
    with pytest.raises(NotFoundError, match="gemma3-270m has no alias 'champion'"):
        resolve_target(settings, "gemma3-270m@champion")
    with pytest.raises(NotFoundError, match="no champion is selected for task "
                                            "'text-generation'"):
        resolve_target(settings, None)
    assert resolve_target(settings, "gemma3-270m:1").manifest.version == 1


def test_prometheus_scrapes_the_gateway(served: tuple[RunningEngine, str], tmp_path: Path
                                        ) -> None:
    """A real Prometheus server scrapes /metrics and can answer a latency query."""
    import time

    from tests.servers import Prometheus

    _, url = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    client.completions.create(model="gemma3-270m", prompt="One, two,", max_tokens=4)
    prometheus = Prometheus(tmp_path / "prometheus", [url.removeprefix("http://")]).start()
    try:
        deadline = time.monotonic() + 30
        found: list[dict[str, object]] = []
        while not found and time.monotonic() < deadline:
            found = prometheus.query('sutazai_requests_total{endpoint="completions"}')
            time.sleep(0.5)
        assert found, prometheus.log()
        assert float(found[0]["value"][1]) >= 1  # type: ignore[index]
        [p95] = prometheus.query("histogram_quantile(0.95, sum by (le) "
                                 "(sutazai_request_duration_seconds_bucket))")
        assert 0 < float(p95["value"][1]) < 60  # type: ignore[index]
        [up] = prometheus.query('up{job="sutazai"}')
        assert up["value"][1] == "1"  # type: ignore[index]
    finally:
        prometheus.stop()


def test_sweep_and_poisson_load_against_the_real_engine(
    served: tuple[RunningEngine, str]
) -> None:
    from sutazai.benchmark.loadgen import run_load
    from sutazai.benchmark.profiles import LoadProfile

    running, url = served
    prompts = [f"Count from {i}:" for i in range(8)]
    sweep = LoadProfile(name="s", mode="sweep", sweep=(1, 3), num_prompts=6, output_tokens=3,
                        warmup=1)
    steps = run_load(url, running.model, prompts, sweep)
    assert [s.concurrency for s in steps] == [1, 3]
    assert all(s.metrics.completed == 6 and not s.incomplete for s in steps)
    assert steps[0].metrics.max_concurrent_requests == 1
    assert steps[1].metrics.max_concurrent_requests <= 3

    poisson = LoadProfile(name="p", mode="poisson", rate=50.0, concurrency=2, num_prompts=6,
                          output_tokens=3, warmup=1, seed=7)
    [step] = run_load(url, running.model, prompts, poisson)
    sent = [r.sent for r in step.records]
    assert step.rate == 50.0 and step.metrics.completed == 6
    assert sent == sorted(sent) and sent[-1] > 0  # arrivals spread out, in order
    with pytest.raises(BenchmarkError, match="needs 7 prompts"):
        run_load(url, running.model, prompts[:3], poisson)


# --- health and self-healing ----------------------------------------------------------------

COUNTING = {"prompt": "Count: 1, 2, 3, 4,", "temperature": 0}


def engine_processes(home: Path) -> list[psutil.Process]:
    """The llama.cpp servers this test process started for the models under ``home``."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with_cmdline = " ".join(child.cmdline()) if child.is_running() else ""
        if "llama_cpp.server" in with_cmdline and str(home) in with_cmdline \
                and child.status() != psutil.STATUS_ZOMBIE:
            found.append(child)
    return found


def metric(url: str, series: str) -> float | None:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def test_a_busy_engine_stays_live_and_ready(served: tuple[RunningEngine, str]) -> None:
    """Single-slot llama.cpp cannot answer a probe behind queued streams: with requests in
    flight through the gateway that is "busy", never a failure of either probe."""
    _, url = served
    ended: list[int] = []

    def stream() -> None:
        body = {**COUNTING, "max_tokens": 16, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as answer:
            ended.append(answer.status_code)
            for _ in answer.iter_bytes():
                pass

    streams = [threading.Thread(target=stream) for _ in range(3)]
    for thread in streams:
        thread.start()
    seen = []
    while any(thread.is_alive() for thread in streams):
        live = httpx.get(f"{url}/health", timeout=10)
        ready = httpx.get(f"{url}/health/ready", timeout=10)
        assert live.status_code == 200, live.text
        assert ready.status_code == 200, ready.text
        seen.append(ready.json()["status"])
        time.sleep(0.25)
    assert ended == [200] * 3
    assert "busy" in seen and set(seen) <= {"ok", "busy"}, seen
    idle = httpx.get(f"{url}/health/ready", timeout=10).json()
    assert idle["status"] == "ok" and idle["in_flight"] == 0 and idle["reason"] is None


def test_a_killed_engine_is_restarted_and_what_it_held_fails_clearly(
    served: tuple[RunningEngine, str], gemma_home: tuple[Settings, Manifest]
) -> None:
    """SIGKILL the engine with a stream and a queued request in flight: the stream ends
    with an error event, the queued request gets a 503 with Retry-After, a request sent
    during the restart (once readiness reports it) waits for it, and the engine is back
    within its load time."""
    running, url = served
    settings, _ = gemma_home
    [engine] = engine_processes(settings.home)
    assert httpx.get(f"{url}/health/ready").json()["status"] == "ok"

    lines: list[str] = []
    first_text = threading.Event()

    def stream() -> None:
        body = {**COUNTING, "max_tokens": 400, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as answer:
            assert answer.status_code == 200
            for line in answer.iter_lines():
                lines.append(line)
                if '"text"' in line:
                    first_text.set()

    replies: dict[str, httpx.Response] = {}

    def send(name: str) -> None:
        replies[name] = httpx.post(f"{url}/v1/completions", json={**COUNTING, "max_tokens": 8},
                                   timeout=180)

    streaming = threading.Thread(target=stream)
    streaming.start()
    assert first_text.wait(60)
    queued = threading.Thread(target=send, args=("queued",))
    queued.start()
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/health").json()["in_flight"] < 2:  # both reached the engine
        assert time.monotonic() < deadline
        time.sleep(0.02)

    engine.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    ready = httpx.get(f"{url}/health/ready", timeout=10)
    live = httpx.get(f"{url}/health", timeout=10)
    assert ready.status_code == 503 and ready.json()["status"] in ("restarting", "degraded")
    assert "SIGKILL" in ready.json()["reason"], ready.text
    assert live.status_code == 200  # liveness: the gateway itself is fine
    # Sent once the gateway knows the engine is dead. One sent in the few milliseconds
    # while the kernel tears the engine down may be written into its socket, so the
    # gateway cannot tell it from one the engine held: it gets the in-flight 503 (seen
    # in CI), which is the honest answer for a request that may have reached the engine.
    during = threading.Thread(target=send, args=("during",))
    during.start()

    while httpx.get(f"{url}/health/ready", timeout=10).status_code != 200:
        assert time.monotonic() - killed < running.load_seconds + 15, "not back in time"
        time.sleep(0.05)
    back = time.monotonic() - killed
    streaming.join(60)
    queued.join(60)
    during.join(180)

    events = [json.loads(line[5:]) for line in lines
              if line.startswith("data:") and line[5:].strip() != "[DONE]"]
    assert "data: [DONE]" not in lines
    assert events[-1]["error"]["code"] == "engine_failed", lines[-3:]
    assert events[-1]["error"]["type"] == "server_error"
    assert all("choices" in event for event in events[:-1])  # whole events before it
    queued_reply = replies["queued"]
    assert queued_reply.status_code == 503, queued_reply.text
    assert queued_reply.json()["error"]["code"] == "engine_failed"
    assert int(queued_reply.headers["retry-after"]) >= 1
    assert replies["during"].status_code == 200, replies["during"].text  # it waited

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    done = client.completions.create(model="gemma3-270m", prompt="Hello", max_tokens=4)
    assert done.choices[0].text
    body = httpx.get(f"{url}/health/ready").json()
    assert body["status"] == "ok" and body["restarts"] == 1
    assert metric(url, 'sutazai_engine_restarts_total{outcome="ok"}') == 1.0
    assert metric(url, "sutazai_engine_up") == 1.0
    [record] = [r for r in open_audit_log(settings).records() if r.action == "engine.restart"]
    assert record.result == "ok" and record.target == "gemma3-270m:1"
    assert "SIGKILL" in record.details["died"] and record.details["downtime_s"] <= back
    [engine] = engine_processes(settings.home)  # one engine: the dead one is gone
    assert os.getpid() in {p.pid for p in engine.parents()}


def test_an_engine_that_cannot_restart_leaves_readiness_503_with_the_reason(
    gemma_home: tuple[Settings, Manifest]
) -> None:
    """Restarts that keep failing stop after the limit; the gateway stays up to say why."""
    settings, manifest = gemma_home
    engine = start_engine(settings, manifest, "llamacpp")
    tries: list[RunningEngine] = []

    def cannot_start(dead: RunningEngine) -> RunningEngine:
        tries.append(dead)
        raise EngineError(f"{dead.manifest.ref}: the GGUF file is corrupt")

    try:
        restart = EngineRestart(cannot_start, max_restarts=2, backoff_s=0.05, wait_s=30)
        app = create_app(engine, owns_engine=True, restart=restart)
        with GatewayThread(app, "127.0.0.1", free_port()) as gateway:
            assert engine.process is not None and engine.process.process is not None
            os.kill(engine.process.process.pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while (ready := httpx.get(f"{gateway.url}/health/ready")).json()["status"] != "failed":
                assert time.monotonic() < deadline, ready.text
                time.sleep(0.05)
            assert ready.status_code == 503
            reason = ready.json()["reason"]
            assert "killed by SIGKILL" in reason and "gave up after 2 restarts" in reason
            assert "the GGUF file is corrupt" in reason
            assert len(tries) == 2
            live = httpx.get(f"{gateway.url}/health")
            assert live.status_code == 200 and live.json()["reason"] == reason
            started = time.monotonic()
            answer = httpx.post(f"{gateway.url}/v1/completions", json={"prompt": "x",
                                                                      "max_tokens": 1})
            assert time.monotonic() - started < 5  # no wait for a restart that will not come
            assert answer.status_code == 503 and answer.headers["retry-after"]
            assert answer.json()["error"]["code"] == "engine_failed"
            assert "gave up" in answer.json()["error"]["message"]
            assert metric(gateway.url, 'sutazai_engine_restarts_total{outcome="failed"}') == 2.0
            assert metric(gateway.url, "sutazai_engine_up") == 0.0
    finally:
        engine.stop()  # also when the test fails before the gateway owns it
