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

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sutazai.access import AccessGuard, AccessMiddleware
from sutazai.errors import NotFoundError, SutazAIError
from sutazai.serving.engines import RunningEngine
from sutazai.serving.openapi import request_problem

if TYPE_CHECKING:
    from sutazai.tls import ServerTLS

LOG = logging.getLogger(__name__)
INTERACTION_HEADER = "x-sutazai-interaction-id"

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2, 2.5, 5, 10, 30, 60)
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5)
RATE_BUCKETS = (1, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000)
ENDPOINT_CAPABILITY = {
    "completions": "completions", "chat/completions": "chat", "embeddings": "embeddings",
}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
              "content-encoding", "upgrade"}
# The caller's SutazAI key is for the gateway: the engine has no use for it, and a key that
# reaches the engine can reach its logs.
CALLER_CREDENTIALS = {"authorization", "x-api-key"}


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
        self.info = Gauge("sutazai_model_info", "The model version and engine being served",
                          ["model", "version", "engine", "digest"], registry=self.registry)
        self.swaps = Counter("sutazai_model_swaps", "Times a new champion replaced the served "
                             "model without a restart", registry=self.registry)
        self.show_model(engine)

    def show_model(self, engine: RunningEngine, previous: RunningEngine | None = None) -> None:
        if previous is not None:
            old = previous.manifest
            self.info.remove(old.name, str(old.version), previous.engine, old.digest)
            self.swaps.inc()
        manifest = engine.manifest
        self.info.labels(manifest.name, str(manifest.version), engine.engine,
                         manifest.digest).set(1)


@dataclass
class _Tally:
    """What one streamed response has shown so far."""

    started: float
    first_token: float | None = None
    chunks_with_text: int = 0
    usage_tokens: int | None = None
    buffer: bytes = b""
    broken: bool = False
    text: list[str] = field(default_factory=list)

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
            piece = choice.get("text") or delta.get("content")
            if piece:
                self.text.append(str(piece))
            if piece or delta.get("reasoning_content"):
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


class FeedbackSink(Protocol):
    """Where served requests and their ratings go (the learning data store)."""

    def log_interaction(self, prompt: str, response: str, *, model: str | None = None,
                        source: str = "serving") -> int: ...

    def rate(self, interaction_id: int, rating: float, label: str | None = None) -> None: ...


@dataclass
class Upstream:
    """One engine behind the gateway, the client that talks to it and its open requests."""

    engine: RunningEngine
    client: httpx.AsyncClient
    in_flight: int = 0


class Gateway:
    """The engine behind the API can change while it serves: :meth:`swap` sends new requests
    to the new engine at once, lets the old one finish what it has, then stops it. That is
    how a running ``sutazai serve`` picks up a new champion with no refused request."""

    def __init__(self, engine: RunningEngine, *, owns_engine: bool,
                 feedback: FeedbackSink | None) -> None:
        self.metrics = GatewayMetrics(engine)
        self.owns_engine = owns_engine
        self.feedback = feedback
        self.upstream: Upstream | None = None
        self.first_engine = engine
        self.loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def _client(engine: RunningEngine) -> httpx.AsyncClient:
        timeout = httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None)
        # Idle connections expire before the engine's uvicorn closes them (its keep-alive is
        # 5 s, httpx's default expiry too): at equal timeouts a request can go out on a
        # connection the engine is closing, and the client would see a 502.
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256,
                              keepalive_expiry=2.0)
        return httpx.AsyncClient(base_url=engine.base_url, timeout=timeout, limits=limits)

    @property
    def engine(self) -> RunningEngine:
        return self.upstream.engine if self.upstream else self.first_engine

    async def swap(self, engine: RunningEngine, drain_timeout_s: float = 300.0) -> None:
        """Route new requests to ``engine``; stop the old one once its requests are done."""
        old = self.upstream
        self.upstream = Upstream(engine, self._client(engine))
        self.metrics.show_model(engine, previous=old.engine if old else None)
        if old is None:
            return
        deadline = time.monotonic() + drain_timeout_s
        while old.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await old.client.aclose()
        await asyncio.to_thread(old.engine.stop)

    def swap_threadsafe(self, engine: RunningEngine, timeout_s: float = 600.0) -> None:
        """:meth:`swap` from another thread (the champion watcher); returns when done."""
        if self.loop is None:
            raise RuntimeError("the gateway is not running")
        asyncio.run_coroutine_threadsafe(self.swap(engine), self.loop).result(timeout_s)


def create_app(engine: RunningEngine, *, owns_engine: bool = False,
               feedback: FeedbackSink | None = None, guard: AccessGuard | None = None
               ) -> Starlette:
    """The ASGI app that fronts ``engine``; ``app.state.gateway`` can swap it later.

    With ``owns_engine`` the app stops the engine (whichever serves by then) when it shuts
    down: uvicorn re-raises SIGTERM/SIGINT after its shutdown, so code after ``uvicorn.run``
    never runs then, and the engine, in a process group of its own, would outlive
    ``sutazai serve``. With ``feedback``, every completion is logged to it (its id comes
    back in the ``x-sutazai-interaction-id`` header) and ``POST /v1/feedback`` rates one.
    With ``guard`` every route but ``/health`` needs an API key whose role allows it
    (:mod:`sutazai.access`); without, the app is open (a loopback server of SutazAI's own,
    such as the benchmark harness's).
    """
    gateway = Gateway(engine, owns_engine=owns_engine, feedback=feedback)
    metrics = gateway.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gateway.loop = asyncio.get_running_loop()
        gateway.upstream = Upstream(engine, gateway._client(engine))
        try:
            yield
        finally:
            current = gateway.upstream
            await current.client.aclose()
            if owns_engine:
                current.engine.stop()

    async def health(request: Request) -> Response:
        upstream = gateway.upstream
        assert upstream is not None
        try:
            answer = await upstream.client.get(upstream.engine.health_path, timeout=5.0)
            ok = upstream.engine.alive() and answer.status_code == 200
        except httpx.HTTPError:
            ok = False
        body = {"status": "ok" if ok else "unavailable", "engine": upstream.engine.engine,
                "model": upstream.engine.model, "version": upstream.engine.manifest.ref}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def spec(request: Request) -> Response:
        from sutazai.serving.openapi import openapi_spec

        return JSONResponse(openapi_spec(auth=guard is not None))

    async def rate(request: Request) -> Response:
        if gateway.feedback is None:
            return openai_error(404, "ratings are kept only with request logging on: set "
                                "SUTAZAI_REQUEST_LOGGING=true and restart sutazai serve",
                                "feedback_disabled")
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        problem = request_problem("feedback", body)
        if problem is not None:
            return openai_error(400, f'{problem}; send {{"id": <x-sutazai-interaction-id>, '
                                '"rating": <number>, "label": <optional text>}', "invalid_feedback")
        interaction, rating, label = int(body["id"]), float(body["rating"]), body.get("label")
        try:
            await asyncio.to_thread(gateway.feedback.rate, interaction, rating, label)
        except NotFoundError:
            # not str(exc): it names the learning database, which is no caller's business
            return openai_error(404, f"no served request has id {interaction}; rate the id "
                                f"from a reply's {INTERACTION_HEADER} header",
                                "feedback_refused")
        except SutazAIError as exc:
            return openai_error(400, str(exc), "feedback_refused")
        return JSONResponse({"id": interaction, "rating": rating, "label": label})

    async def proxy(request: Request) -> Response:
        path = request.path_params["path"]
        body = await request.body()
        payload: dict[str, Any] = {}
        if request.method == "POST" and body:
            try:
                payload = json.loads(body)
            except ValueError:
                return openai_error(400, "the request body is not valid JSON", "invalid_json")
            if not isinstance(payload, dict):
                return openai_error(400, "the request body must be a JSON object",
                                    "invalid_json")
            # What the document refuses, the engine would answer with a 500 and a traceback.
            problem = request_problem(path, payload)
            if problem is not None:
                return openai_error(400, problem, "invalid_request")
        upstream = gateway.upstream
        assert upstream is not None
        logprobs = payload.get("logprobs")  # not `in (None, False)`: 0 == False
        if logprobs is not None and logprobs is not False and upstream.engine.engine == "llamacpp":
            return openai_error(400, "the llamacpp engine does not compute logprobs: leave "
                                "logprobs out, or serve the model with --engine vllm",
                                "logprobs_not_supported")
        needed = ENDPOINT_CAPABILITY.get(path)
        if needed is not None:
            refusal = _refusal(upstream.engine, needed, payload)
            if refusal is not None:
                metrics.requests.labels(path, str(refusal.status_code)).inc()
                return refusal
            if payload.get("model") != upstream.engine.model:
                # The engine knows the model by its served name only: vLLM refuses the
                # version's ref, and llama.cpp answers a request without one with the
                # snapshot's absolute path as the "model".
                payload["model"] = upstream.engine.model
                body = json.dumps(payload).encode()
        return await _forward(request, upstream, path, body, payload)

    async def _forward(request: Request, upstream: Upstream, path: str, body: bytes,
                       payload: dict[str, Any]) -> Response:
        client = upstream.client
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() not in CALLER_CREDENTIALS}
        upstream_request = client.build_request(
            request.method, f"/v1/{path}", content=body, headers=headers,
            params=request.query_params,
        )
        tally = _Tally(started=time.perf_counter())
        metrics.in_flight.inc()
        upstream.in_flight += 1
        try:
            try:
                answer = await client.send(upstream_request, stream=True)
            except httpx.TransportError:
                # No answer at all: refused, or a pooled connection the engine closed as
                # the request went out (seen under load as ReadError or "disconnected
                # without sending a response"). An engine request changes nothing, so one
                # more try on a fresh connection is safe.
                answer = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            metrics.in_flight.dec()
            upstream.in_flight -= 1
            metrics.requests.labels(path, "502").inc()
            return openai_error(502, f"engine {upstream.engine.engine} did not answer: "
                                f"{type(exc).__name__}: {exc}",
                                "engine_unavailable", "server_error")
        response_headers = {k: v for k, v in answer.headers.items()
                            if k.lower() not in HOP_BY_HOP}
        logged = gateway.feedback is not None and path in ("completions", "chat/completions")

        def finish() -> None:
            metrics.in_flight.dec()
            upstream.in_flight -= 1
            status = "stream_cut" if tally.broken else str(answer.status_code)
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

        if payload.get("stream"):
            def finish_stream() -> None:
                finish()
                if logged and not tally.broken and answer.status_code == 200:
                    _record(gateway, upstream.engine, payload, "".join(tally.text))

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in answer.aiter_raw():
                        tally.feed(chunk)
                        yield chunk
                except httpx.HTTPError:
                    # The engine cut the stream. The status is sent already, so the client
                    # sees a stream without [DONE]; the metrics count it apart.
                    tally.broken = True
                finally:
                    await answer.aclose()

            return StreamingResponse(relay(), status_code=answer.status_code,
                                     headers=response_headers,
                                     background=BackgroundTask(finish_stream))
        content = await answer.aread()
        await answer.aclose()
        reply: dict[str, Any] = {}
        with contextlib.suppress(ValueError, KeyError, TypeError):
            reply = json.loads(content)
            tally.usage_tokens = int(reply["usage"]["completion_tokens"])
        if logged and answer.status_code == 200 and reply:
            interaction = await asyncio.to_thread(_record, gateway, upstream.engine, payload,
                                                  _reply_text(reply))
            if interaction is not None:
                response_headers[INTERACTION_HEADER] = str(interaction)
        return Response(content, status_code=answer.status_code, headers=response_headers,
                        background=BackgroundTask(finish))

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/metrics", prometheus),
            Route("/openapi.json", spec),
            Route("/v1/feedback", rate, methods=["POST"]),
            Route("/v1/{path:path}", proxy, methods=["GET", "POST"]),
        ],
        lifespan=lifespan,
        middleware=[] if guard is None else [Middleware(AccessMiddleware, guard=guard)],
    )
    app.state.gateway = gateway
    return app


def _prompt_text(payload: dict[str, Any]) -> str:
    """The prompt of a completion, or a chat's messages as ``role: content`` lines."""
    if "messages" in payload:
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in payload["messages"]
                         if isinstance(m, dict))
    prompt = payload.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def _reply_text(reply: dict[str, Any]) -> str:
    choice = (reply.get("choices") or [{}])[0]
    return str(choice.get("text") or (choice.get("message") or {}).get("content") or "")


def _record(gateway: Gateway, engine: RunningEngine, payload: dict[str, Any],
            text: str) -> int | None:
    """Log one served completion; a store problem costs the log line, never the answer."""
    assert gateway.feedback is not None
    try:
        return gateway.feedback.log_interaction(_prompt_text(payload), text,
                                                model=engine.manifest.ref, source="serving")
    except Exception:  # serving must not fail because logging did
        LOG.exception("could not log a served request to the feedback store")
        return None


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

    def __init__(self, app: Starlette, host: str, port: int, tls: ServerTLS | None = None
                 ) -> None:
        import uvicorn

        self.url = f"{'https' if tls else 'http'}://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
            **(tls.uvicorn_options() if tls else {}),
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
