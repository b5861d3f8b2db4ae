"""The gateway's hold on its engine: which one is current, whether it is ready, and healing.

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
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx
from starlette.responses import JSONResponse

from sutazai.errors import EngineError
from sutazai.serving.engines import RunningEngine
from sutazai.serving.gateway_metrics import GatewayMetrics
from sutazai.serving.openai_errors import openai_error

LOG = logging.getLogger(__name__)
EngineStatus = Literal["ok", "busy", "degraded", "restarting", "failed"]
RestartOutcome = Literal["ok", "error"]
READY_PROBE_TIMEOUT_S = 3.0  # inside a Kubernetes probe's timeoutSeconds
WATCH_INTERVAL_S = 0.25  # how often the gateway looks whether its engine process still runs
DEATH_SETTLE_S = 0.2  # a killed engine's sockets close a moment before it can be reaped


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
                 feedback: FeedbackSink | None, restart: EngineRestart | None = None,
                 metrics: GatewayMetrics | None = None, label: str | None = None) -> None:
        """``metrics`` and ``label``: a gateway of several models shares one set of series,
        each model's under its ``label`` (default: the name the engine serves)."""
        self.label_fixed = label
        if metrics is None:
            metrics = GatewayMetrics(engine)
        else:
            metrics.show_model(engine)
        self.metrics = metrics
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
    def label(self) -> str:
        """The ``model`` label of this gateway's series."""
        return self.label_fixed or self.engine.model

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
            self.metrics.set_up(self.label, False)
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
        self.metrics.set_up(self.label, True)
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
        self.metrics.set_up(self.label, True)
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
        before = self.label
        self.upstream = Upstream(engine, self._client(engine))
        self.metrics.show_model(engine, previous=old.engine if old else None)
        self.state, self.reason = "ok", None
        self.metrics.forget_up(before)
        self.metrics.set_up(self.label, True)
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
