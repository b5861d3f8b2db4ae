"""SutazAI's serving path: an OpenAI-compatible front for any engine, with Prometheus metrics.

Engines differ in what they measure (llama-cpp-python exports no metrics at all), so the
gateway measures every request the same way, whatever serves it: end-to-end latency,
time to first token (first streamed text), output tokens and their rate, and requests in
flight, all at ``/metrics``. It forwards bytes as they come (streams stay streams) and
adds one parse of each request body, which is how it can refuse, with an OpenAI-style
error, what the model cannot do (chat on a base model without a chat template, which
llama.cpp would otherwise answer with a wrong template) instead of returning nonsense.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sutazai.serving.engines import RunningEngine

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5)
RATE_BUCKETS = (1, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000)
ENDPOINT_CAPABILITY = {
    "completions": "completions", "chat/completions": "chat", "embeddings": "embeddings",
}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
              "content-encoding", "upgrade"}


class GatewayMetrics:
    """The Prometheus series of one gateway, in a registry of its own."""

    def __init__(self, engine: RunningEngine) -> None:
        self.registry = CollectorRegistry()
        labels = ["endpoint"]
        self.requests = Counter("sutazai_requests", "Requests answered, by endpoint and status",
                                [*labels, "status"], registry=self.registry)
        self.latency = Histogram("sutazai_request_duration_seconds",
                                 "End-to-end request latency", labels,
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("sutazai_time_to_first_token_seconds",
                              "Time to the first streamed token", labels,
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.output_tokens = Counter("sutazai_output_tokens", "Generated tokens", labels,
                                     registry=self.registry)
        self.tokens_per_second = Histogram(
            "sutazai_output_tokens_per_second", "Per-request decode rate after the first token",
            labels, buckets=RATE_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("sutazai_requests_in_flight", "Requests being answered",
                               registry=self.registry)
        info = Gauge("sutazai_model_info", "The model version and engine being served",
                     ["model", "version", "engine", "digest"], registry=self.registry)
        manifest = engine.manifest
        info.labels(manifest.name, str(manifest.version), engine.engine, manifest.digest).set(1)


@dataclass
class _Tally:
    """What one streamed response has shown so far."""

    started: float
    first_token: float | None = None
    chunks_with_text: int = 0
    usage_tokens: int | None = None
    buffer: bytes = b""
    broken: bool = False

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        *events, self.buffer = self.buffer.split(b"\n\n")
        for event in events:
            for line in event.splitlines():
                if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
                    self._data(line[5:])

    def _data(self, raw: bytes) -> None:
        try:
            payload = json.loads(raw)
        except ValueError:
            return
        usage = payload.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            self.usage_tokens = int(usage["completion_tokens"])
        for choice in payload.get("choices") or ():
            delta = choice.get("delta") or {}
            if choice.get("text") or delta.get("content") or delta.get("reasoning_content"):
                self.chunks_with_text += 1
                if self.first_token is None:
                    self.first_token = time.perf_counter()

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.chunks_with_text


def openai_error(status: int, message: str, code: str, kind: str = "invalid_request_error"
                 ) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None,
                                   "code": code}}, status_code=status)


def create_app(engine: RunningEngine, *, owns_engine: bool = False) -> Starlette:
    """The ASGI app that fronts ``engine``.

    With ``owns_engine`` the app stops the engine when it shuts down: uvicorn re-raises
    SIGTERM/SIGINT after its shutdown, so code after ``uvicorn.run`` never runs then, and
    the engine, in a process group of its own, would outlive ``sutazai serve``.
    """
    metrics = GatewayMetrics(engine)
    state: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        timeout = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None)
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
        try:
            async with httpx.AsyncClient(base_url=engine.base_url, timeout=timeout,
                                         limits=limits) as client:
                state["client"] = client
                yield
        finally:
            if owns_engine:
                engine.stop()

    async def health(request: Request) -> Response:
        try:
            answer = await state["client"].get(engine.health_path, timeout=5.0)
            ok = engine.alive() and answer.status_code == 200
        except httpx.HTTPError:
            ok = False
        body = {"status": "ok" if ok else "unavailable", "engine": engine.engine,
                "model": engine.model, "version": engine.manifest.ref}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def proxy(request: Request) -> Response:
        path = request.path_params["path"]
        body = await request.body()
        payload: dict[str, Any] = {}
        if request.method == "POST" and body:
            try:
                payload = json.loads(body)
            except ValueError:
                return openai_error(400, "the request body is not valid JSON", "invalid_json")
        needed = ENDPOINT_CAPABILITY.get(path)
        if needed is not None:
            refusal = _refusal(engine, needed, payload)
            if refusal is not None:
                metrics.requests.labels(path, str(refusal.status_code)).inc()
                return refusal
        return await _forward(request, path, body, bool(payload.get("stream")))

    async def _forward(request: Request, path: str, body: bytes, stream: bool) -> Response:
        client = state["client"]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream_request = client.build_request(
            request.method, f"/v1/{path}", content=body, headers=headers,
            params=request.query_params,
        )
        tally = _Tally(started=time.perf_counter())
        metrics.in_flight.inc()
        try:
            upstream = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            metrics.in_flight.dec()
            metrics.requests.labels(path, "502").inc()
            return openai_error(502, f"engine {engine.engine} did not answer: {exc}",
                                "engine_unavailable", "server_error")
        response_headers = {k: v for k, v in upstream.headers.items()
                            if k.lower() not in HOP_BY_HOP}

        def finish() -> None:
            metrics.in_flight.dec()
            status = "stream_cut" if tally.broken else str(upstream.status_code)
            metrics.requests.labels(path, status).inc()
            if status != "200" or path not in ENDPOINT_CAPABILITY:
                return
            done = time.perf_counter()
            metrics.latency.labels(path).observe(done - tally.started)
            if tally.tokens:
                metrics.output_tokens.labels(path).inc(tally.tokens)
            if tally.first_token is not None:
                metrics.ttft.labels(path).observe(tally.first_token - tally.started)
                if tally.tokens > 1 and done > tally.first_token:
                    metrics.tokens_per_second.labels(path).observe(
                        (tally.tokens - 1) / (done - tally.first_token))

        if stream:
            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in upstream.aiter_raw():
                        tally.feed(chunk)
                        yield chunk
                except httpx.HTTPError:
                    # The engine cut the stream. The status is sent already, so the client
                    # sees a stream without [DONE]; the metrics count it apart.
                    tally.broken = True
                finally:
                    await upstream.aclose()

            return StreamingResponse(relay(), status_code=upstream.status_code,
                                     headers=response_headers, background=BackgroundTask(finish))
        content = await upstream.aread()
        await upstream.aclose()
        with contextlib.suppress(ValueError, KeyError, TypeError):
            tally.usage_tokens = int(json.loads(content)["usage"]["completion_tokens"])
        return Response(content, status_code=upstream.status_code, headers=response_headers,
                        background=BackgroundTask(finish))

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/metrics", prometheus),
            Route("/v1/{path:path}", proxy, methods=["GET", "POST"]),
        ],
        lifespan=lifespan,
    )


def _refusal(engine: RunningEngine, needed: str, payload: dict[str, Any]) -> Response | None:
    """An OpenAI-style 4xx for a request this model cannot answer, or None."""
    manifest = engine.manifest
    asked = payload.get("model")
    if asked not in (None, engine.model, manifest.name, manifest.ref):
        return openai_error(404, f"model {asked!r} is not served here; this endpoint serves "
                            f"{engine.model!r} ({manifest.ref})", "model_not_found")
    if needed in engine.capabilities:
        return None
    if needed == "chat":
        message = (f"{manifest.ref} has no chat template (it is a base model): use "
                   "/v1/completions with a plain prompt, or serve an instruction-tuned model")
    else:
        message = (f"{manifest.ref} ({', '.join(manifest.tasks)}) does not offer /v1/"
                   f"{'embeddings' if needed == 'embeddings' else needed}; it offers "
                   + ", ".join(sorted(engine.capabilities)))
    return openai_error(400, message, f"{needed}_not_supported")


class GatewayThread:
    """Run a gateway with uvicorn in a background thread (tests, benchmarks, `make run`)."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        import uvicorn

        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
        ))
        self.thread = threading.Thread(target=self.server.run, name="sutazai-gateway",
                                       daemon=True)

    def start(self, timeout_s: float = 10.0) -> GatewayThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
