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

Given an :class:`EngineRestart`, the gateway heals: when the engine process dies it starts
a new one like it (immediately, then with exponential backoff, at most ``max_restarts``
times within ``window_s``). Requests in flight at the death get a 503 with Retry-After, or,
for a stream already started, an OpenAI-style error event (code ``engine_failed``); new
requests wait up to ``wait_s`` for the restart. Restarts are counted in
``sutazai_engine_restarts_total`` and recorded (the audit log's ``engine.restart``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sutazai.errors import EngineError, NotFoundError, SutazAIError
from sutazai.security.access import AccessGuard, AccessMiddleware
from sutazai.serving.engines import RunningEngine
from sutazai.serving.openapi import request_problem

if TYPE_CHECKING:
    from sutazai.security.tls import ServerTLS

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
EngineStatus = Literal["ok", "busy", "degraded", "restarting", "failed"]
RestartOutcome = Literal["ok", "error"]
READY_PROBE_TIMEOUT_S = 3.0  # inside a Kubernetes probe's timeoutSeconds
WATCH_INTERVAL_S = 0.25  # how often the gateway looks whether its engine process still runs
DEATH_SETTLE_S = 0.2  # a killed engine's sockets close a moment before it can be reaped


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
        self.engine_restarts = Counter("sutazai_engine_restarts",
                                       "Restarts of a dead engine the gateway tried, by outcome "
                                       "(ok, failed)", ["outcome"], registry=self.registry)
        self.engine_up = Gauge("sutazai_engine_up", "1 while the engine process behind the "
                               "gateway runs, 0 while it is dead or restarting",
                               registry=self.registry)
        self.engine_up.set(1)
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


def openai_error(status: int, message: str, code: str, kind: str = "invalid_request_error",
                 retry_after_s: float | None = None) -> JSONResponse:
    headers = None if retry_after_s is None else {"Retry-After": str(math.ceil(retry_after_s))}
    return JSONResponse({"error": {"message": message, "type": kind, "param": None,
                                   "code": code}}, status_code=status, headers=headers)


def error_event(message: str, code: str) -> bytes:
    """An OpenAI-style error as a server-sent event: how a stream already answered 200
    says it failed (the ``openai`` client raises it as an APIError)."""
    error = {"message": message, "type": "server_error", "param": None, "code": code}
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


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


@dataclass(frozen=True)
class EngineRestart:
    """How the gateway brings back an engine whose process died.

    ``start`` starts an engine like the dead one (same model version and engine; it blocks
    until the new one is ready, or raises). The first restart is immediate, each further one
    within ``window_s`` waits ``backoff_s`` doubled per earlier restart, capped at
    ``backoff_max_s``; after ``max_restarts`` within ``window_s`` the gateway gives up (its
    readiness then stays 503 with the reason). ``record`` is told of every attempt (the
    audit log). Requests arriving meanwhile wait up to ``wait_s``.
    """

    start: Callable[[RunningEngine], RunningEngine]
    max_restarts: int = 5
    window_s: float = 900.0
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    wait_s: float = 30.0
    record: Callable[[RunningEngine, RestartOutcome, dict[str, Any]], None] | None = None

    def delay(self, earlier: int) -> float:
        """Seconds to wait before a restart, given the restarts tried earlier in the window."""
        if earlier <= 0:
            return 0.0
        return float(min(self.backoff_s * 2 ** (earlier - 1), self.backoff_max_s))


def death_summary(engine: RunningEngine) -> str:
    """One line on how the engine's process ended (its log tail goes to the log only)."""
    popen = engine.process.process if engine.process is not None else None
    code = popen.returncode if popen is not None else None
    if code is None:
        return f"the {engine.engine} engine process is gone"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"the {engine.engine} engine was killed by {signal.Signals(-code).name}"
    return f"the {engine.engine} engine exited with code {code}"


class Gateway:
    """The engine behind the API can change while it serves: :meth:`swap` sends new requests
    to the new engine at once, lets the old one finish what it has, then stops it. That is
    how a running ``sutazai serve`` picks up a new champion with no refused request.

    With ``restart`` it also replaces an engine that died (:meth:`watch`, :meth:`_heal`).
    """

    def __init__(self, engine: RunningEngine, *, owns_engine: bool,
                 feedback: FeedbackSink | None, restart: EngineRestart | None = None) -> None:
        self.metrics = GatewayMetrics(engine)
        self.owns_engine = owns_engine
        self.feedback = feedback
        self.upstream: Upstream | None = None
        self.first_engine = engine
        self.loop: asyncio.AbstractEventLoop | None = None
        self.restart = restart
        self.state: Literal["ok", "restarting", "failed"] = "ok"
        self.reason: str | None = None
        self.restarts = 0
        self.attempts: deque[float] = deque()  # monotonic times of restarts in the window
        self.closing = False
        self._started: list[RunningEngine] = []  # engines this gateway started (restarts)
        self._lock = threading.Lock()
        self._kick = asyncio.Event()  # look at the engine now, not at the next tick
        self._serving = asyncio.Event()  # set while no restart is under way
        self._serving.set()
        # One long-lived thread starts engines: a child asked to die with its parent's
        # thread (PR_SET_PDEATHSIG) must not be started from a pool thread that exits.
        self._starter: ThreadPoolExecutor | None = None

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

    @property
    def heals(self) -> bool:
        return self.restart is not None and self.restart.max_restarts > 0

    @property
    def current(self) -> Upstream:
        if self.upstream is None:
            raise RuntimeError("the gateway is not running")
        return self.upstream

    # ------------------------------------------------------------------ health
    def status(self) -> tuple[EngineStatus, str | None]:
        """The engine's state from what the gateway knows, without asking the engine."""
        upstream = self.current
        if self.state != "ok":
            return self.state, self.reason
        if not upstream.engine.alive():
            self._kick.set()
            if self.heals:
                return "restarting", f"{death_summary(upstream.engine)}; restarting it"
            return "degraded", (f"{death_summary(upstream.engine)}; this gateway does not "
                                "restart engines")
        return ("busy" if upstream.in_flight else "ok"), None

    async def readiness(self) -> tuple[EngineStatus, str | None]:
        """:meth:`status`, and for an idle engine whether it answers its health path."""
        status, reason = self.status()
        if status != "ok":
            return status, reason
        upstream = self.current
        engine = upstream.engine
        try:
            answer = await upstream.client.get(engine.health_path,
                                               timeout=READY_PROBE_TIMEOUT_S)
            if answer.status_code == 200:
                return "ok", None
            failure = f"answered {engine.health_path} with HTTP {answer.status_code}"
        except httpx.HTTPError as exc:
            failure = (f"did not answer {engine.health_path} within "
                       f"{READY_PROBE_TIMEOUT_S:.0f}s ({type(exc).__name__})")
        status, reason = self.status()  # requests may have arrived, or it died, meanwhile
        if status != "ok":
            return status, reason
        return "degraded", f"the {engine.engine} engine is idle and {failure}"

    def health_body(self, status: EngineStatus, reason: str | None) -> dict[str, Any]:
        engine = self.engine
        return {"status": status, "engine": engine.engine, "model": engine.model,
                "version": engine.manifest.ref,
                "in_flight": self.upstream.in_flight if self.upstream else 0,
                "restarts": self.restarts, "reason": reason}

    # ------------------------------------------------------------- self-healing
    def retry_after_s(self) -> float:
        """When a caller may try again: about one engine load from now."""
        return max(1.0, self.engine.load_seconds + 1.0)

    async def engine_failed(self, upstream: Upstream, settle_s: float = DEATH_SETTLE_S
                            ) -> bool:
        """Whether the engine behind ``upstream`` has died (or been replaced by a restart)."""
        deadline = time.monotonic() + settle_s
        while True:
            if not upstream.engine.alive():
                self._kick.set()
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)

    def failure_response(self, message: str) -> JSONResponse:
        return openai_error(503, message, "engine_failed", "server_error", self.retry_after_s())

    async def available(self) -> Upstream | JSONResponse:
        """The upstream to send a request to, once it runs; waits up to the restart's
        ``wait_s`` while the engine is being restarted; a 503 when it cannot be had."""
        while True:
            upstream = self.current
            if self.state == "ok" and upstream.engine.alive():
                return upstream
            if self.state == "failed":
                return openai_error(503, f"the engine is down and will not be restarted: "
                                    f"{self.reason}", "engine_failed", "server_error", 60)
            if not self.heals:
                return self.failure_response(f"{death_summary(upstream.engine)}; this gateway "
                                             "does not restart engines")
            assert self.restart is not None
            if self.state == "ok":  # died a moment ago: the watcher has not seen it yet
                self._kick.set()
            try:
                await asyncio.wait_for(self._restarted(), self.restart.wait_s)
            except TimeoutError:
                return openai_error(503, f"the engine is being restarted ({self.reason}) and "
                                    f"was not back within {self.restart.wait_s:g}s; retry",
                                    "engine_restarting", "server_error", self.retry_after_s())

    async def _restarted(self) -> None:
        while True:
            if self.state == "failed" or (self.state == "ok" and self.current.engine.alive()):
                return
            if self.state == "ok":
                await asyncio.sleep(0.02)
            else:
                await self._serving.wait()

    async def watch(self) -> None:
        """Look every ``WATCH_INTERVAL_S`` (or when kicked) whether the engine still runs;
        heal it when it died (with a restart policy), else just show it in the metrics."""
        while not self.closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), WATCH_INTERVAL_S)
            self._kick.clear()
            upstream = self.upstream
            if upstream is None or self.state != "ok" or upstream.engine.alive():
                continue
            self.metrics.engine_up.set(0)
            if self.heals:
                await self._heal(upstream)

    async def _heal(self, dead: Upstream) -> None:
        assert self.restart is not None
        policy = self.restart
        died_at = time.monotonic()
        death = death_summary(dead.engine)
        LOG.error("%s; restarting it. %s", death, dead.engine.death())
        self.state, self.reason = "restarting", f"{death}; restarting it"
        self._serving.clear()
        last_error = ""
        try:
            while self.upstream is dead and not self.closing:
                now = time.monotonic()
                while self.attempts and now - self.attempts[0] > policy.window_s:
                    self.attempts.popleft()
                earlier = len(self.attempts)
                if earlier >= policy.max_restarts:
                    self._give_up(death, earlier, last_error)
                    await self._record(dead.engine, "error", {
                        "died": death, "gave_up": True, "restarts_in_window": earlier,
                        "window_s": policy.window_s, "error": last_error or None})
                    return
                delay = policy.delay(earlier)
                self.reason = (f"{death}; restart {earlier + 1} of {policy.max_restarts}"
                               + (f" in {delay:g}s" if delay else "")
                               + (f" (the last failed: {last_error})" if last_error else ""))
                if delay:
                    await asyncio.sleep(delay)
                self.attempts.append(time.monotonic())
                try:
                    engine = await asyncio.get_running_loop().run_in_executor(
                        self._starter, self._start_like, dead.engine)
                except Exception as exc:  # an engine that cannot start must not stop the loop
                    last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    self.metrics.engine_restarts.labels("failed").inc()
                    LOG.error("restart %d of %s failed: %s", earlier + 1,
                              dead.engine.manifest.ref, exc)
                    await self._record(dead.engine, "error", {
                        "died": death, "attempt": earlier + 1, "error": str(exc)[:2000]})
                    continue
                if self.upstream is not dead or self.closing:  # swapped or shutting down
                    await asyncio.to_thread(engine.stop)
                    return
                self._install(engine)
                downtime = time.monotonic() - died_at
                LOG.warning("the %s engine serving %s is back after %.1fs (load %.1fs)",
                            engine.engine, engine.manifest.ref, downtime, engine.load_seconds)
                await self._record(engine, "ok", {
                    "died": death, "attempt": earlier + 1, "downtime_s": round(downtime, 3),
                    "load_s": round(engine.load_seconds, 3), "backoff_s": delay})
                await dead.client.aclose()
                return
        finally:
            self._serving.set()  # waiters look again: back, given up, or swapped

    def _start_like(self, dead: RunningEngine) -> RunningEngine:
        assert self.restart is not None
        engine = self.restart.start(dead)
        with self._lock:
            if not self.closing:
                self._started.append(engine)
                return engine
        engine.stop()  # the gateway shut down while the engine loaded
        raise EngineError("the gateway shut down while the engine restarted")

    def _install(self, engine: RunningEngine) -> None:
        self.upstream = Upstream(engine, self._client(engine))
        self.restarts += 1
        self.metrics.engine_restarts.labels("ok").inc()
        self.metrics.engine_up.set(1)
        self.state, self.reason = "ok", None

    def _give_up(self, death: str, restarts: int, last_error: str) -> None:
        assert self.restart is not None
        window = f"{self.restart.window_s:g}s"
        self.state = "failed"
        self.reason = (f"{death}; gave up after {restarts} restarts within {window}"
                       + (f", the last failed: {last_error}" if last_error else
                          " (it kept dying)")
                       + "; fix the cause (the engine log in the serving folder) and restart "
                       "sutazai serve")
        LOG.error("engine restarts exhausted: %s", self.reason)

    async def _record(self, engine: RunningEngine, outcome: RestartOutcome,
                      details: dict[str, Any]) -> None:
        if self.restart is None or self.restart.record is None:
            return
        try:
            await asyncio.to_thread(self.restart.record, engine, outcome,
                                    {"engine": engine.engine, **details})
        except Exception:  # a lost record must not stop the healing; the log says so
            LOG.exception("could not record the engine restart (audit engine.restart)")

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.upstream = Upstream(self.first_engine, self._client(self.first_engine))
        if self.heals:
            self._starter = ThreadPoolExecutor(1, thread_name_prefix="sutazai-engine-restart")

    def begin_closing(self) -> list[RunningEngine]:
        """No more restarts; the engines restarts started, to stop (a restart that is still
        loading stops its engine itself)."""
        with self._lock:
            self.closing = True
            return list(self._started)

    async def close(self) -> Upstream:
        """Close the client; returns what served last."""
        current = self.current
        await current.client.aclose()
        if self._starter is not None:
            self._starter.shutdown(wait=False)
        return current

    # -------------------------------------------------------------------- swap
    async def swap(self, engine: RunningEngine, drain_timeout_s: float = 300.0) -> None:
        """Route new requests to ``engine``; stop the old one once its requests are done.

        A new engine also ends a restart under way, or one given up: it serves from now."""
        old = self.upstream
        self.upstream = Upstream(engine, self._client(engine))
        self.metrics.show_model(engine, previous=old.engine if old else None)
        self.state, self.reason = "ok", None
        self.metrics.engine_up.set(1)
        self._serving.set()
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
    metrics = gateway.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        watcher = asyncio.create_task(gateway.watch(), name="sutazai-engine-watch")
        try:
            yield
        finally:
            restarted = gateway.begin_closing()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            current = await gateway.close()
            if owns_engine or current.engine is not engine:
                current.engine.stop()
            for started in restarted:  # its own, whoever owns the first engine
                started.stop()

    async def live(request: Request) -> Response:
        return JSONResponse(gateway.health_body(*gateway.status()))

    async def ready(request: Request) -> Response:
        status, reason = await gateway.readiness()
        return JSONResponse(gateway.health_body(status, reason),
                            status_code=200 if status in ("ok", "busy") else 503)

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
        # A request the engine never received (it had died) may go once more, to the
        # restarted engine; one it received never goes twice (it may be what killed it).
        for _ in range(2):
            upstream_or_refusal = await gateway.available()
            if isinstance(upstream_or_refusal, Response):
                metrics.requests.labels(path, str(upstream_or_refusal.status_code)).inc()
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
                    metrics.requests.labels(path, str(refusal.status_code)).inc()
                    return refusal
                if payload.get("model") != upstream.engine.model:
                    # The engine knows the model by its served name only: vLLM refuses the
                    # version's ref, and llama.cpp answers a request without one with the
                    # snapshot's absolute path as the "model".
                    payload["model"] = upstream.engine.model
                    body = json.dumps(payload).encode()
            forwarded = await _forward(request, upstream, path, body, payload)
            if forwarded is not None:
                return forwarded
        metrics.requests.labels(path, "503").inc()
        return gateway.failure_response("the engine died twice before this request reached "
                                        "it; retry")

    async def _send(upstream: Upstream, upstream_request: httpx.Request
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

    async def _forward(request: Request, upstream: Upstream, path: str, body: bytes,
                       payload: dict[str, Any]) -> Response | None:
        """Send the request to ``upstream``; None when its engine was found dead before it
        got the request (the caller may send it to the restarted one)."""
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

        def failed(status: int) -> None:
            metrics.in_flight.dec()
            upstream.in_flight -= 1
            metrics.requests.labels(path, str(status)).inc()

        sent = await _send(upstream, upstream_request)
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
