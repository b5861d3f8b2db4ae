"""SutazAI's serving path: an OpenAI-compatible front for any engine, with Prometheus metrics.

Engines differ in what they measure (llama-cpp-python exports no metrics at all), so the
gateway measures every request the same way, whatever serves it: end-to-end latency,
time to first token (first streamed text), output tokens and their rate, and requests in
flight, all at ``/metrics``. It forwards bytes as they come (streams stay streams) and
adds one parse of each request body, which is how it can refuse, with an OpenAI-style
error, what the model cannot do (chat on a base model without a chat template, which
llama.cpp would otherwise answer with a wrong template) instead of returning nonsense.

Health comes in two probes. ``/health`` (also ``/health/live``) is liveness: 200 while the
gateway runs, whatever the engine does, and it never asks the engine (a single-slot
llama.cpp busy with 30 streams cannot answer a probe in time, and a liveness failure would
restart a healthy pod). ``/health/ready`` is readiness: 200 when the engine answers
(``ok``) or, too busy to answer, has requests in flight through the gateway (``busy``);
503 when it does not answer (``degraded``), died and is being restarted (``restarting``),
or could not be restarted (``failed``), with the reason.

Given an :class:`~sutazai.serving.supervision.EngineRestart`, the gateway heals a dead
engine (:mod:`sutazai.serving.supervision`); what it measures is in
:mod:`sutazai.serving.gateway_metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sutazai.errors import NotFoundError, SutazAIError
from sutazai.security.access import AccessGuard, AccessMiddleware
from sutazai.serving.engines import RunningEngine
from sutazai.serving.gateway_metrics import GatewayMetrics, Tally
from sutazai.serving.openai_errors import error_event, openai_error
from sutazai.serving.openapi import request_problem
from sutazai.serving.supervision import (
    EngineRestart,
    FeedbackSink,
    Gateway,
    Upstream,
    death_summary,
)

if TYPE_CHECKING:
    from sutazai.security.tls import ServerTLS

LOG = logging.getLogger(__name__)
INTERACTION_HEADER = "x-sutazai-interaction-id"

ENDPOINT_CAPABILITY = {
    "completions": "completions", "chat/completions": "chat", "embeddings": "embeddings",
}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
              "content-encoding", "upgrade"}
# The caller's SutazAI key is for the gateway: the engine has no use for it, and a key that
# reaches the engine can reach its logs.
CALLER_CREDENTIALS = {"authorization", "x-api-key"}


@dataclass
class Lease:
    """The gateway (engine) a request goes to, held until its answer is sent: ``release``
    runs then, so a multi-model router never evicts an engine with a request in flight."""

    gateway: Gateway
    release: Callable[[], None] = field(default=lambda: None)


class Routing(Protocol):
    """Which engine answers a request: one (:class:`SingleRoute`) or one of several models
    loaded on demand (:class:`sutazai.serving.multi.ModelRouter`)."""

    metrics: GatewayMetrics
    feedback: FeedbackSink | None

    @property
    def default_label(self) -> str:
        """The ``model`` label of a request refused before it was routed."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def route(self, payload: dict[str, Any]) -> Lease | Response:
        """The lease for the model ``payload`` asks for, or the error to answer instead."""

    async def models(self) -> Response | None:
        """The answer to ``GET /v1/models``, or None to ask the engine."""

    def live(self) -> dict[str, Any]: ...

    async def ready(self) -> tuple[int, dict[str, Any]]: ...


class SingleRoute:
    """Every request to the one engine of ``gateway`` (``sutazai serve NAME``)."""

    def __init__(self, gateway: Gateway, owns_engine: bool) -> None:
        self.gateway = gateway
        self.metrics = gateway.metrics
        self.feedback = gateway.feedback
        self.owns_engine = owns_engine
        self._lease = Lease(gateway)
        self._watcher: asyncio.Task[None] | None = None

    @property
    def default_label(self) -> str:
        return self.gateway.label

    async def start(self) -> None:
        await self.gateway.start()
        self._watcher = asyncio.create_task(self.gateway.watch(), name="sutazai-engine-watch")

    async def stop(self) -> None:
        gateway = self.gateway
        restarted = gateway.begin_closing()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        current = await gateway.close()
        if self.owns_engine or current.engine is not gateway.first_engine:
            current.engine.stop()
        for started in restarted:  # its own, whoever owns the first engine
            started.stop()

    async def route(self, payload: dict[str, Any]) -> Lease | Response:
        return self._lease

    async def models(self) -> Response | None:
        return None

    def live(self) -> dict[str, Any]:
        return self.gateway.health_body(*self.gateway.status())

    async def ready(self) -> tuple[int, dict[str, Any]]:
        status, reason = await self.gateway.readiness()
        return (200 if status in ("ok", "busy") else 503,
                self.gateway.health_body(status, reason))


def create_app(engine: RunningEngine, *, owns_engine: bool = False,
               feedback: FeedbackSink | None = None, guard: AccessGuard | None = None,
               restart: EngineRestart | None = None) -> Starlette:
    """The ASGI app that fronts ``engine``; ``app.state.gateway`` can swap it later.

    With ``owns_engine`` the app stops the engine (whichever serves by then) when it shuts
    down: uvicorn re-raises SIGTERM/SIGINT after its shutdown, so code after ``uvicorn.run``
    never runs then, and the engine, in a process group of its own, would outlive
    ``sutazai serve``. With ``feedback``, every completion is logged to it (its id comes
    back in the ``x-sutazai-interaction-id`` header) and ``POST /v1/feedback`` rates one.
    With ``guard`` every route but the health probes needs an API key whose role allows it
    (:mod:`sutazai.security.access`); without, the app is open (a loopback server of SutazAI's own,
    such as the benchmark harness's). With ``restart`` the app restarts an engine that died
    (see the module docstring); the engines it started itself it always stops.
    """
    gateway = Gateway(engine, owns_engine=owns_engine, feedback=feedback, restart=restart)
    app = routed_app(SingleRoute(gateway, owns_engine), guard=guard)
    app.state.gateway = gateway
    return app


def routed_app(routing: Routing, *, guard: AccessGuard | None = None) -> Starlette:
    """The gateway's routes in front of ``routing``: one engine or several models."""
    metrics = routing.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await routing.start()
        try:
            yield
        finally:
            await routing.stop()

    async def live(request: Request) -> Response:
        return JSONResponse(routing.live())

    async def ready(request: Request) -> Response:
        status, body = await routing.ready()
        return JSONResponse(body, status_code=status)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def spec(request: Request) -> Response:
        from sutazai.serving.openapi import openapi_spec

        return JSONResponse(openapi_spec(auth=guard is not None))

    async def rate(request: Request) -> Response:
        if routing.feedback is None:
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
            await asyncio.to_thread(routing.feedback.rate, interaction, rating, label)
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
                return _refused(path, openai_error(400, "the request body is not valid JSON",
                                                   "invalid_json"))
            if not isinstance(payload, dict):
                return _refused(path, openai_error(400, "the request body must be a JSON "
                                                   "object", "invalid_json"))
            # What the document refuses, the engine would answer with a 500 and a traceback.
            problem = request_problem(path, payload)
            if problem is not None:
                return _refused(path, openai_error(400, problem, "invalid_request"))
        if request.method == "GET" and path == "models":
            listing = await routing.models()
            if listing is not None:
                return listing
        asked = payload.get("model")
        lease = await routing.route(payload)
        if isinstance(lease, Response):
            return _refused(path, lease)
        if payload.get("model") != asked:  # the router named the model as its engine does
            body = json.dumps(payload).encode()
        try:
            response = await _answer(lease.gateway, request, path, body, payload)
        except BaseException:
            lease.release()
            raise
        after = response.background

        async def release() -> None:
            try:
                if after is not None:
                    await after()
            finally:
                lease.release()

        response.background = BackgroundTask(release)
        return response

    def _refused(path: str, response: Response) -> Response:
        metrics.requests.labels(path, routing.default_label, str(response.status_code)).inc()
        return response

    async def _answer(gateway: Gateway, request: Request, path: str, body: bytes,
                      payload: dict[str, Any]) -> Response:
        # A request the engine never received (it had died) may go once more, to the
        # restarted engine; one it received never goes twice (it may be what killed it).
        for _ in range(2):
            upstream_or_refusal = await gateway.available()
            if isinstance(upstream_or_refusal, Response):
                metrics.requests.labels(path, gateway.label,
                                        str(upstream_or_refusal.status_code)).inc()
                return upstream_or_refusal
            upstream = upstream_or_refusal
            logprobs = payload.get("logprobs")  # not `in (None, False)`: 0 == False
            if logprobs is not None and logprobs is not False \
                    and upstream.engine.engine == "llamacpp":
                return openai_error(400, "the llamacpp engine does not compute logprobs: "
                                    "leave logprobs out, or serve the model with --engine vllm",
                                    "logprobs_not_supported")
            needed = ENDPOINT_CAPABILITY.get(path)
            if needed is not None:
                refusal = _refusal(upstream.engine, needed, payload)
                if refusal is not None:
                    metrics.requests.labels(path, gateway.label,
                                            str(refusal.status_code)).inc()
                    return refusal
                if payload.get("model") != upstream.engine.model:
                    # The engine knows the model by its served name only: vLLM refuses the
                    # version's ref, and llama.cpp answers a request without one with the
                    # snapshot's absolute path as the "model".
                    payload["model"] = upstream.engine.model
                    body = json.dumps(payload).encode()
            forwarded = await _forward(gateway, request, upstream, path, body, payload)
            if forwarded is not None:
                return forwarded
        metrics.requests.labels(path, gateway.label, "503").inc()
        return gateway.failure_response("the engine died twice before this request reached "
                                        "it; retry")

    async def _send(gateway: Gateway, upstream: Upstream, upstream_request: httpx.Request
                    ) -> httpx.Response | tuple[httpx.HTTPError, bool]:
        """The engine's answer (headers), or the error and whether the engine got the
        request (False: the connection was refused, nothing was sent)."""
        delivered = False
        error: httpx.HTTPError | None = None
        for attempt in range(2):
            try:
                return await upstream.client.send(upstream_request, stream=True)
            except httpx.TransportError as exc:
                # No answer at all: refused, or a pooled connection the engine closed as
                # the request went out (seen under load as ReadError or "disconnected
                # without sending a response"). An engine request changes nothing, so one
                # more try on a fresh connection is safe, unless the engine died.
                error = exc
                delivered = delivered or not isinstance(exc, httpx.ConnectError)
                if attempt == 0 and await gateway.engine_failed(upstream, settle_s=0):
                    break
            except httpx.HTTPError as exc:
                return exc, True
        assert error is not None
        return error, delivered

    async def _forward(gateway: Gateway, request: Request, upstream: Upstream, path: str,
                       body: bytes, payload: dict[str, Any]) -> Response | None:
        """Send the request to ``upstream``; None when its engine was found dead before it
        got the request (the caller may send it to the restarted one)."""
        client = upstream.client
        label = gateway.label
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() not in CALLER_CREDENTIALS}
        upstream_request = client.build_request(
            request.method, f"/v1/{path}", content=body, headers=headers,
            params=request.query_params,
        )
        tally = Tally(started=time.perf_counter())
        metrics.in_flight.inc()
        upstream.in_flight += 1

        def failed(status: int) -> None:
            metrics.in_flight.dec()
            upstream.in_flight -= 1
            metrics.requests.labels(path, label, str(status)).inc()

        sent = await _send(gateway, upstream, upstream_request)
        if not isinstance(sent, httpx.Response):
            exc, delivered = sent
            if await gateway.engine_failed(upstream):
                if not delivered and gateway.heals:
                    metrics.in_flight.dec()
                    upstream.in_flight -= 1
                    return None
                failed(503)
                return gateway.failure_response(
                    f"{death_summary(upstream.engine)} while this request was in flight"
                    + ("; it is being restarted: retry" if gateway.heals else ""))
            failed(502)
            return openai_error(502, f"engine {upstream.engine.engine} did not answer: "
                                f"{type(exc).__name__}: {exc}",
                                "engine_unavailable", "server_error")
        answer = sent
        response_headers = {k: v for k, v in answer.headers.items()
                            if k.lower() not in HOP_BY_HOP}
        logged = gateway.feedback is not None and path in ("completions", "chat/completions")

        def finish() -> None:
            metrics.in_flight.dec()
            upstream.in_flight -= 1
            status = "stream_cut" if tally.broken else str(answer.status_code)
            metrics.requests.labels(path, label, status).inc()
            if status != "200" or path not in ENDPOINT_CAPABILITY:
                return
            done = time.perf_counter()
            metrics.latency.labels(path, label).observe(done - tally.started)
            if tally.tokens:
                metrics.output_tokens.labels(path, label).inc(tally.tokens)
            if tally.first_token is not None:
                metrics.ttft.labels(path, label).observe(tally.first_token - tally.started)
                if tally.tokens > 1 and done > tally.first_token:
                    metrics.tokens_per_second.labels(path, label).observe(
                        (tally.tokens - 1) / (done - tally.first_token))

        if payload.get("stream"):
            def finish_stream() -> None:
                finish()
                if logged and not tally.broken and answer.status_code == 200:
                    _record(gateway, upstream.engine, payload, "".join(tally.text))

            events = answer.status_code == 200 and answer.headers.get(
                "content-type", "").startswith("text/event-stream")

            async def relay() -> AsyncIterator[bytes]:
                held = b""  # the start of an event not complete yet
                try:
                    async for chunk in answer.aiter_raw():
                        tally.feed(chunk)
                        if events:
                            # Whole events only: a cut then never leaves half an event
                            # before the error event (the client could not parse it).
                            held += chunk
                            end = held.rfind(b"\n\n") + 2
                            if end < 2:
                                continue
                            chunk, held = held[:end], held[end:]
                        yield chunk
                    if held:
                        yield held
                except httpx.HTTPError as exc:
                    # The engine cut the stream. The status (200) is sent already: an error
                    # event says it failed, as OpenAI's API does; the metrics count it apart.
                    tally.broken = True
                    if await gateway.engine_failed(upstream):
                        yield error_event(
                            f"{death_summary(upstream.engine)} while streaming this answer"
                            + ("; it is being restarted: retry" if gateway.heals else ""),
                            "engine_failed")
                    else:
                        yield error_event(f"the {upstream.engine.engine} engine cut the "
                                          f"stream ({type(exc).__name__}); retry",
                                          "engine_stream_cut")
                finally:
                    await answer.aclose()

            return StreamingResponse(relay(), status_code=answer.status_code,
                                     headers=response_headers,
                                     background=BackgroundTask(finish_stream))
        try:
            content = await answer.aread()
        except httpx.HTTPError as exc:
            await answer.aclose()
            if await gateway.engine_failed(upstream):
                failed(503)
                return gateway.failure_response(
                    f"{death_summary(upstream.engine)} while answering this request")
            failed(502)
            return openai_error(502, f"engine {upstream.engine.engine} cut its answer: "
                                f"{type(exc).__name__}: {exc}", "engine_unavailable",
                                "server_error")
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
            Route("/health", live),
            Route("/health/live", live),
            Route("/health/ready", ready),
            Route("/metrics", prometheus),
            Route("/openapi.json", spec),
            Route("/v1/feedback", rate, methods=["POST"]),
            Route("/v1/{path:path}", proxy, methods=["GET", "POST"]),
        ],
        lifespan=lifespan,
        middleware=[] if guard is None else [Middleware(AccessMiddleware, guard=guard)],
    )
    app.state.routing = routing
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
