"""OpenTelemetry: nothing at all when off; spans of steps and pipelines (in memory); W3C
context through the gateway to its engine; OTLP/HTTP protobuf to a real HTTP receiver."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette

from sutazai.config import Settings, load_settings
from sutazai.observability import tracing as telemetry
from sutazai.observability.metrics import pipeline_run
from sutazai.serving.gateway import GatewayThread, create_app
from sutazai.serving.process import free_port
from sutazai.workflows.nightly import plan_benchmarks
from tests.conftest import gemma_entry
from tests.helpers import spacy_entry, upstream_engine

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spans(settings: Settings) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert telemetry.configure_tracing(settings, exporter, set_global=False)
    yield exporter
    telemetry.shutdown_tracing()


@pytest.fixture(autouse=True)
def tracing_reset(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME", "OTEL_SDK_DISABLED",
                 "OTEL_EXPORTER_OTLP_ENDPOINT", "TRACEPARENT", "TRACESTATE"):
        monkeypatch.delenv(name, raising=False)
    telemetry.shutdown_tracing()
    yield
    telemetry.shutdown_tracing()


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in finished}


def test_off_means_no_sdk_no_provider_no_middleware(settings: Settings) -> None:
    """In a fresh interpreter: the default settings never import the SDK."""
    code = """
import sys
from starlette.applications import Starlette
from sutazai.observability import tracing as telemetry
from sutazai.config import load_settings
app = Starlette()
assert telemetry.instrument_app(app, load_settings()) is False
assert app.user_middleware == []
with telemetry.span("x", a=1) as s:
    s.set_attribute("b", 2)
assert s is telemetry.NOOP_SPAN and not telemetry.tracing_enabled()
print(sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT, env=dict(os.environ)).stdout
    assert out.strip() == "[]"


def test_exporter_settings_and_standard_variables(settings: Settings,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert telemetry.exporter_kind(settings) == "none"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gw-7")
    assert telemetry.exporter_kind(settings) == "console"  # the settings left it open
    assert telemetry.service_name(settings) == "gw-7"
    explicit = Settings(home=settings.home, otel_exporter="none", otel_service_name="mine")
    assert telemetry.exporter_kind(explicit) == "none"  # set explicitly: the settings win
    assert telemetry.service_name(explicit) == "mine"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert telemetry.exporter_kind(Settings(home=settings.home, otel_exporter="otlp")) == "none"
    with_endpoint = Settings(home=settings.home, otel_endpoint="http://jaeger:4318/")
    assert telemetry.traces_endpoint(with_endpoint) == "http://jaeger:4318/v1/traces"


def test_spans_nest_carry_attributes_and_record_errors(
        spans: InMemorySpanExporter, tmp_path: Path) -> None:
    with telemetry.span("outer", model="gemma:1", dropped=None, path=tmp_path, n=3) as outer:
        outer.set_attribute("extra", True)
        with pytest.raises(ValueError, match="bad"), telemetry.span("inner"):
            raise ValueError("bad")
    found = by_name(spans.get_finished_spans())
    inner, outer_span = found["inner"], found["outer"]
    assert outer_span.attributes == {"model": "gemma:1", "path": str(tmp_path), "n": 3,
                                     "extra": True}
    assert inner.parent is not None and inner.parent.span_id == outer_span.context.span_id
    assert inner.status.status_code == trace.StatusCode.ERROR
    assert [e.name for e in inner.events] == ["exception"]
    assert outer_span.status.status_code == trace.StatusCode.UNSET


def test_a_pipeline_run_is_the_root_of_its_steps_and_publishes_traceparent(
        spans: InMemorySpanExporter, settings: Settings) -> None:
    with pipeline_run(settings, "benchmark_select"):
        inherited = os.environ["TRACEPARENT"]
        assert plan_benchmarks(settings).items == []
    assert "TRACEPARENT" not in os.environ  # restored after the run
    found = by_name(spans.get_finished_spans())
    root, step = found["pipeline sutazai-benchmark-select"], found["step plan_benchmarks"]
    assert root.parent is None and root.attributes is not None
    assert root.attributes["sutazai.succeeded"] is True
    assert step.parent is not None and step.parent.span_id == root.context.span_id
    assert inherited.startswith(f"00-{root.context.trace_id:032x}-{root.context.span_id:016x}-")


def test_a_step_process_joins_the_trace_it_inherits(
        spans: InMemorySpanExporter, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACEPARENT", TRACEPARENT)
    plan_benchmarks(settings)
    [step] = spans.get_finished_spans()
    assert f"{step.context.trace_id:032x}" == TRACE_ID
    assert step.parent is not None and f"{step.parent.span_id:016x}" == PARENT_ID
    assert step.attributes == {"sutazai.step": "plan_benchmarks"}


# ---------------------------------------------------------------------------- serving
class RecordingEngine(http.server.ThreadingHTTPServer):
    """A minimal OpenAI-style upstream that keeps the headers of every request."""

    def __init__(self) -> None:
        self.headers_seen: list[dict[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer({"status": "ok"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
                self._answer({"choices": [{"text": " Paris", "index": 0}],
                              "usage": {"completion_tokens": 2, "prompt": body["prompt"]}})

            def _answer(self, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


def test_the_gateway_traces_a_request_and_hands_its_context_to_the_engine(
        spans: InMemorySpanExporter, settings: Settings) -> None:
    engine = RecordingEngine()
    app = create_app(upstream_engine(engine.url))
    assert telemetry.instrument_app(app, settings)
    try:
        with GatewayThread(app, "127.0.0.1", free_port()) as gateway:
            answer = httpx.post(f"{gateway.url}/v1/completions", headers={
                "traceparent": TRACEPARENT, "tracestate": "vendor=1"},
                json={"prompt": "The capital of France is", "max_tokens": 2})
            assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == " Paris"
            assert httpx.get(f"{gateway.url}/metrics").status_code == 200  # not traced
            refused = httpx.post(f"{gateway.url}/v1/completions",
                                 json={"model": "gpt-4o", "prompt": "x"})
            assert refused.status_code == 404
            engine.shutdown()
            engine.server_close()
            failed = httpx.post(f"{gateway.url}/v1/completions", json={"prompt": "x"})
            assert failed.status_code == 502
    finally:
        engine.server_close()
    served, refusal, broken = spans.get_finished_spans()
    assert served.name == "POST /v1/{path:path}" and served.kind == trace.SpanKind.SERVER
    assert f"{served.context.trace_id:032x}" == TRACE_ID
    assert served.parent is not None and f"{served.parent.span_id:016x}" == PARENT_ID
    assert served.attributes is not None
    assert {k: served.attributes[k] for k in (
        "http.request.method", "http.route", "url.path", "http.response.status_code",
        "sutazai.endpoint", "sutazai.model", "sutazai.engine")} == {
        "http.request.method": "POST", "http.route": "/v1/{path:path}",
        "url.path": "/v1/completions", "http.response.status_code": 200,
        "sutazai.endpoint": "completions", "sutazai.model": "tiny:3", "sutazai.engine": "llamacpp"}
    assert served.status.status_code == trace.StatusCode.UNSET
    # the engine got the gateway's span as its parent, in the same trace, tracestate kept
    forwarded = engine.headers_seen[0]
    assert forwarded["traceparent"] == (f"00-{TRACE_ID}-{served.context.span_id:016x}-01")
    assert forwarded["tracestate"] == "vendor=1"
    assert refusal.attributes is not None
    assert refusal.attributes["http.response.status_code"] == 404
    assert refusal.status.status_code == trace.StatusCode.UNSET  # the client's error
    assert refusal.parent is None  # no traceparent: a new trace
    assert broken.attributes is not None and broken.attributes["http.response.status_code"] == 502
    assert broken.status.status_code == trace.StatusCode.ERROR


def test_with_tracing_off_the_app_is_left_alone(settings: Settings) -> None:
    app = Starlette()
    assert telemetry.instrument_app(app, settings) is False
    assert app.user_middleware == []


@pytest.mark.slow
def test_a_real_engine_behind_the_traced_gateway(
        spans: InMemorySpanExporter, settings: Settings, gemma_gguf: Path) -> None:
    """llama.cpp with the real Gemma 3 270M: the completion's span carries the status, the
    served version and the duration of the whole answer, streamed or not."""
    from sutazai.repository import open_repository
    from sutazai.serving.engines import start_engine
    from sutazai.workflows.mirror import mirror_catalog

    settings.catalog.write_text(yaml.safe_dump({"models": [gemma_entry(gemma_gguf)]}))
    [outcome] = mirror_catalog(settings, register=False)
    assert outcome.error is None
    running = start_engine(settings, open_repository(settings).get("gemma3-270m"), "llamacpp")
    app = create_app(running, owns_engine=True)
    assert telemetry.instrument_app(app, settings)
    with GatewayThread(app, "127.0.0.1", free_port()) as gateway:
        for stream in (False, True):
            answer = httpx.post(f"{gateway.url}/v1/completions", timeout=120, headers={
                "traceparent": TRACEPARENT}, json={"prompt": "The capital of France is",
                                                    "max_tokens": 4, "stream": stream})
            assert answer.status_code == 200
    plain, streamed = [s for s in spans.get_finished_spans() if s.name.startswith("POST ")]
    for span in (plain, streamed):
        assert span.attributes is not None
        assert span.attributes["http.response.status_code"] == 200
        assert span.attributes["sutazai.model"] == "gemma3-270m:1"
        assert f"{span.context.trace_id:032x}" == TRACE_ID
        assert span.end_time is not None and span.start_time is not None
        assert span.end_time > span.start_time


# ------------------------------------------------------------------------------- OTLP
class OtlpReceiver(http.server.ThreadingHTTPServer):
    """Stands in for the Jaeger collector, which cannot run here (no container runtime,
    no Jaeger package): it speaks the same OTLP/HTTP protobuf protocol on ``/v1/traces``
    that Jaeger's collector accepts on port 4318, decodes every
    ``ExportTraceServiceRequest`` and keeps it."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.content_types: list[str] = []
        self.received = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                status = 200 if self.path == "/v1/traces" else 404
                if status == 200:
                    owner.requests.append(request)
                    owner.content_types.append(self.headers.get("Content-Type", ""))
                    owner.received.set()
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def spans(self) -> list[tuple[str, dict[str, Any], Any]]:
        """(service.name, span attributes, span) of everything received."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value
                            for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        attributes = {a.key: getattr(a.value, a.value.WhichOneof("value"))
                                      for a in span.attributes}
                        found.append((resource["service.name"], attributes, span))
        return found


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.shutdown()
    server.server_close()


def test_spans_reach_an_otlp_http_collector(receiver: OtlpReceiver, settings: Settings
                                            ) -> None:
    configured = Settings(home=settings.home, otel_exporter="otlp", otel_endpoint=receiver.url,
                          otel_service_name="sutazai-test")
    assert telemetry.configure_tracing(configured, set_global=False)
    with telemetry.span("nightly step", model="gemma:1"):
        pass
    telemetry.shutdown_tracing()  # flushes the batch
    [(service, attributes, span)] = receiver.spans()
    assert service == "sutazai-test" and span.name == "nightly step"
    assert attributes == {"model": "gemma:1"}
    assert receiver.content_types == ["application/x-protobuf"]


def test_a_step_subprocess_exports_into_its_parents_trace(
        receiver: OtlpReceiver, settings: Settings) -> None:
    """As kfp.local runs a step: another Python process that inherits the environment,
    configured only by SUTAZAI_* variables, exiting right after its step."""
    env = dict(os.environ, SUTAZAI_OTEL_EXPORTER="otlp", SUTAZAI_OTEL_ENDPOINT=receiver.url,
               SUTAZAI_OTEL_SERVICE_NAME="sutazai-step", TRACEPARENT=TRACEPARENT)
    code = ("from sutazai.config import load_settings\n"
            "from sutazai.workflows.nightly import plan_benchmarks\n"
            "print(len(plan_benchmarks(load_settings()).items))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert receiver.received.wait(10)
    [(service, attributes, span)] = receiver.spans()
    assert service == "sutazai-step" and span.name == "step plan_benchmarks"
    assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == PARENT_ID
    assert attributes == {"sutazai.step": "plan_benchmarks"}


@pytest.mark.slow
def test_a_local_kfp_run_is_one_trace(receiver: OtlpReceiver, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      write_catalog: Callable[..., Path]) -> None:
    """The runner hook (``pipeline_run`` around ``run_pipeline``) with kfp.local: every
    step runs in a subprocess of its own, configures tracing from the SUTAZAI_* variables
    it inherits and exports its span as a child of the run's root span."""
    from pipelines.runner import run_pipeline
    from sutazai.workflows.mirror import mirror_catalog

    monkeypatch.setenv("SUTAZAI_VLLM_VENV", str(tmp_path / "no-vllm"))
    monkeypatch.setenv("SUTAZAI_BENCHMARK_PROFILE", "smoke")
    monkeypatch.setenv("SUTAZAI_OTEL_EXPORTER", "otlp")
    monkeypatch.setenv("SUTAZAI_OTEL_ENDPOINT", receiver.url)
    write_catalog(spacy_entry())
    settings = load_settings()
    [pulled] = mirror_catalog(settings, register=False)  # one model: the loop is not empty
    assert pulled.error is None
    assert telemetry.configure_tracing(settings, set_global=False)
    run_pipeline("benchmark_select", {}, settings)  # opens the run's root span itself
    telemetry.shutdown_tracing()
    found = {span.name: span for _, _, span in receiver.spans()}
    root = found["pipeline sutazai-benchmark-select"]
    for step in ("step derive_for_vllm", "step plan_benchmarks", "step run_benchmark",
                 "step select_tasks"):
        assert found[step].trace_id == root.trace_id, step
        assert found[step].parent_span_id == root.span_id, step
    benchmark = found["benchmark"]  # inside the benchmark step's process
    assert benchmark.parent_span_id == found["step run_benchmark"].span_id
