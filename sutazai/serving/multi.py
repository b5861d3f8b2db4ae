"""Many models behind one endpoint: route by the request's ``model``, load engines on
demand, and evict the least recently used idle one when the memory budget runs short.

Why: one machine is asked for more models than it can hold at once (a champion per task,
a few versions under evaluation), and clients should not need a port per model. So
``sutazai serve A B C`` (or ``--champions``) lists every model at ``/v1/models`` and
starts none: the first request for a model starts its engine, and later requests wait
for that load (up to ``serve_load_wait_s``, then a 503 with Retry-After).

Memory: before a load, the model's expected memory (its measured peak RSS when this
process loaded it before, else :func:`estimate_bytes` from its file sizes) is checked
against ``serve_memory_budget_mib`` minus what the resident engines hold; idle engines
are stopped, least recently used first, until it fits. An engine with a request in flight
is never stopped: a request holds a :class:`~sutazai.serving.gateway.Lease` from routing
until its last byte is sent, so eviction cannot fail a request. When only busy engines
could make room, the load waits for one of them to go idle (and is dropped if every
request waiting for it gave up).

Each loaded model gets a :class:`~sutazai.serving.supervision.Gateway` of its own, the one
single-model serving uses, so self-healing (restart with backoff), draining swaps and the
metrics work per engine; they share one set of series, labelled with the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse, Response

from sutazai.config import Settings
from sutazai.errors import NotFoundError, SutazAIError
from sutazai.registry.task_aliases import TaskChoice
from sutazai.repository.manifest import Manifest, parse_ref
from sutazai.security.audit import audit
from sutazai.serving.engines import RunningEngine, engine_for, start_engine
from sutazai.serving.gateway import Lease
from sutazai.serving.gateway_metrics import GatewayMetrics
from sutazai.serving.openai_errors import openai_error
from sutazai.serving.supervision import EngineRestart, FeedbackSink, Gateway

LOG = logging.getLogger(__name__)
MIB = 2**20
#: Resident memory of an engine per byte of weights, before it has been measured: llama.cpp
#: maps the GGUF and touches all of it, plus its context and compute buffers. On the safe
#: side: Gemma 3 270M Q4_K_M (253 MB of weights) is estimated at 558 MiB and peaked at
#: 414 MiB (n_ctx 2048, llama-cpp-python 0.3); once measured, the measurement is used.
WEIGHT_FACTOR = 1.25
#: What an engine process holds besides its weights: the Python server of llama.cpp;
#: vLLM's runtime on CPU (its KV cache is added from the settings); nothing for Ollama,
#: which loads models in a server of its own, outside this budget.
ENGINE_OVERHEAD_BYTES = {"llamacpp": 256 * MIB, "vllm": 2048 * MIB, "ollama": 0}
#: A model that failed to load is refused this long before the next request tries again:
#: a corrupt file then costs one load attempt, not one per request.
LOAD_FAILURE_HOLD_S = 10.0
#: How long the answer to ``NAME@ALIAS`` is reused before MLflow is asked again.
ALIAS_CACHE_S = 10.0
#: Retry-After for a model that has never loaded in this process.
FIRST_LOAD_RETRY_S = 5.0


def estimate_bytes(settings: Settings, manifest: Manifest, engine: str) -> int:
    """Memory a model's engine needs, from the size of its files (see WEIGHT_FACTOR)."""
    if engine == "ollama":
        return 0
    overhead = ENGINE_OVERHEAD_BYTES.get(engine, 256 * MIB)
    if engine == "vllm":
        overhead += settings.vllm_cpu_kvcache_gib * 1024 * MIB
    return int(manifest.size * WEIGHT_FACTOR) + overhead


class LoadRefused(SutazAIError):
    """A load that did not happen; ``response`` is what the waiting requests get."""

    def __init__(self, response: JSONResponse, message: str) -> None:
        super().__init__(message)
        self.response = response


@dataclass
class ServedModel:
    """One model the endpoint serves, loaded or not."""

    key: str  # its id at /v1/models and its ``model`` label
    manifest: Manifest
    engine: str
    task: str | None = None  # set for a task's champion: the task name routes to it too
    gateway: Gateway | None = None
    watcher: asyncio.Task[None] | None = None
    loading: asyncio.Task[Gateway] | None = None
    leases: int = 0  # requests routed to it and not yet answered
    last_used: float = 0.0
    admitted_bytes: int = 0  # what the budget counted when it was loaded
    load_seconds: float | None = None
    failure: tuple[float, str] | None = None  # (when, why) of the last failed load
    waiting: str | None = None  # why a load under way is not started yet

    @property
    def loaded(self) -> bool:
        return self.gateway is not None

    @property
    def busy(self) -> bool:
        upstream = self.gateway.upstream if self.gateway is not None else None
        return self.leases > 0 or (upstream is not None and upstream.in_flight > 0)

    def resident_bytes(self) -> int:
        """What it holds now for the budget: its peak RSS, at least what it was admitted at
        (llama.cpp's mapped weights count only once touched: right after a load the RSS
        understates what the first request will use)."""
        peak = self.gateway.engine.peak_rss_bytes if self.gateway is not None else None
        return max(peak or 0, self.admitted_bytes)


@dataclass
class ModelRouter:
    """Routes each request to the engine of the model it names, loading it on demand.

    ``targets`` are (manifest, engine or None, task or None); ``engine`` overrides every
    target's engine. ``budget_bytes`` 0 means no limit. ``start`` starts an engine (the
    real :func:`~sutazai.serving.engines.start_engine`; tests may wrap it).
    """

    settings: Settings
    targets: Sequence[tuple[Manifest, str | None, str | None]]
    engine: str | None = None
    feedback: FeedbackSink | None = None
    restart: EngineRestart | None = None
    budget_bytes: int = 0
    load_wait_s: float = 60.0
    start_engine: Callable[[Settings, Manifest, str | None], RunningEngine] = start_engine
    models: list[ServedModel] = field(init=False)
    metrics: GatewayMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.models = []
        seen: set[tuple[str, int]] = set()
        for manifest, engine, task in self.targets:
            if (manifest.name, manifest.version) in seen:
                continue  # named twice (A and A:1): one engine
            seen.add((manifest.name, manifest.version))
            # an engine that cannot load the format fails here, before anything loads
            chosen = engine_for(self.settings, manifest, self.engine or engine).name
            self.models.append(ServedModel("", manifest, chosen, task))
        if not self.models:
            raise NotFoundError("nothing to serve: name at least one model")
        self._name_models()
        self.metrics = GatewayMetrics()
        self.metrics.models_loaded.set(0)
        self.measured: dict[tuple[str, str], int] = {}  # (digest, engine) -> peak RSS
        self.loop: asyncio.AbstractEventLoop | None = None
        self._memory: asyncio.Lock | None = None
        self._changed: asyncio.Event | None = None  # a lease was released
        self._aliases: dict[tuple[str, str], tuple[float, int]] = {}
        self._starter: ThreadPoolExecutor | None = None
        self.closing = False

    @classmethod
    def from_settings(cls, settings: Settings,
                      targets: Sequence[tuple[Manifest, str | None, str | None]],
                      engine: str | None = None, **options: Any) -> ModelRouter:
        return cls(settings, targets, engine,
                   budget_bytes=settings.serve_memory_budget_mib * MIB,
                   load_wait_s=settings.serve_load_wait_s, **options)

    def _name_models(self) -> None:
        """A model's id is its name, or its ref when two versions of one name are served."""
        names = [m.manifest.name for m in self.models]
        for model in self.models:
            model.key = (model.manifest.name if names.count(model.manifest.name) == 1
                         else model.manifest.ref)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._memory = asyncio.Lock()
        self._changed = asyncio.Event()
        # One long-lived thread starts engines (see Gateway: PR_SET_PDEATHSIG is per thread).
        self._starter = ThreadPoolExecutor(1, thread_name_prefix="sutazai-model-load")

    async def stop(self) -> None:
        """Stop every engine (the app shuts down); waits for none of their requests."""
        self.closing = True
        for model in self.models:
            if model.loading is not None and not model.loading.done():
                model.loading.cancel()
                with contextlib.suppress(BaseException):
                    await model.loading
            if model.gateway is not None:
                await self._unload(model)
        if self._starter is not None:
            self._starter.shutdown(wait=False)

    def stop_now(self) -> None:
        """Stop any engine still running, from outside the event loop (after it ended)."""
        for model in self.models:
            gateway = model.gateway
            if gateway is not None:
                model.gateway = None
                for engine in {id(e): e for e in (gateway.engine, gateway.first_engine,
                                                  *gateway.begin_closing())}.values():
                    engine.stop()

    # -------------------------------------------------------------------- routing
    @property
    def default_label(self) -> str:
        return ""

    async def route(self, payload: dict[str, Any]) -> Lease | Response:
        found = await self.find(payload.get("model"))
        if isinstance(found, Response):
            return found
        model = found
        model.leases += 1  # before any await: from here on it cannot be evicted
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                model.leases -= 1
                model.last_used = time.monotonic()
                if self._changed is not None:
                    self._changed.set()

        try:
            ready = await self._ready(model)
        except BaseException:
            release()
            raise
        if isinstance(ready, Response):
            release()
            return ready
        model.last_used = time.monotonic()
        payload["model"] = ready.engine.model  # what the engine knows it by
        return Lease(ready, release)

    async def chat_lease(self) -> Lease | str:
        """A lease on a model that offers chat, to generate knowledge answers with; or why
        there is none. A loaded one first (the chat champion, else the one used last), so
        a question loads nothing; else the chat champion, loaded on demand as a request
        naming it would load it."""

        def offers_chat(model: ServedModel) -> bool:
            gateway = model.gateway
            return (gateway is not None and "chat" in gateway.engine.capabilities
                    and gateway.status()[0] in ("ok", "busy"))

        champion = next((m for m in self.models if m.task == "chat"), None)
        loaded = sorted((m for m in self.models if offers_chat(m)),
                        key=lambda m: (m is champion, m.last_used), reverse=True)
        if loaded:
            chosen = loaded[0]
        elif champion is not None and champion.gateway is None:
            chosen = champion
        else:
            return ("no model served here offers chat (none loaded offers it, and no chat "
                    "champion is served)")
        lease = await self.route({"model": chosen.key})
        if isinstance(lease, Response):
            return f"the chat model {chosen.key} is not available ({_message(lease)})"
        if "chat" not in lease.gateway.engine.capabilities:
            lease.release()
            return f"the chat model {chosen.key} has no chat template"
        return lease

    async def find(self, asked: object) -> ServedModel | JSONResponse:
        """The served model a request's ``model`` names: its id, the task it is champion
        of, ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS`` (resolved as ``sutazai serve``
        resolves it)."""
        served = ", ".join(m.key for m in self.models)
        if asked is None or asked == "":
            if len(self.models) == 1:
                return self.models[0]
            return openai_error(400, f"name the model: this endpoint serves {served}",
                                "model_required")
        if not isinstance(asked, str):
            return openai_error(400, "model must be a string", "invalid_request")
        for model in self.models:
            if asked in (model.key, model.manifest.ref, model.task):
                return model
        name, at, alias = asked.partition("@")
        candidates = [m for m in self.models if m.manifest.name == name]
        version: int | None = None
        if candidates and at:
            try:
                version = await asyncio.to_thread(self._alias_version, name, alias)
            except NotFoundError:
                return openai_error(404, f"model {asked!r}: {name} has no alias {alias!r}; "
                                    f"this endpoint serves {served}", "model_not_found")
            except SutazAIError as exc:
                return openai_error(503, f"could not resolve {asked!r}: "
                                    f"{str(exc).splitlines()[0]}", "alias_unavailable",
                                    "server_error", 5)
        elif candidates and not at:
            with contextlib.suppress(NotFoundError, ValueError):
                name, version = parse_ref(asked)
            if ":" not in asked:  # NAME: the latest version served here
                return max(candidates, key=lambda m: m.manifest.version)
        chosen = [m for m in candidates if m.manifest.version == version]
        if chosen:
            return chosen[0]
        return openai_error(404, f"model {asked!r} is not served here; this endpoint "
                            f"serves {served}", "model_not_found")

    def _alias_version(self, name: str, alias: str) -> int:
        cached = self._aliases.get((name, alias))
        if cached is not None and time.monotonic() - cached[0] < ALIAS_CACHE_S:
            return cached[1]
        from sutazai.registry import open_registry

        version = open_registry(self.settings).repository_version_for_alias(name, alias)
        self._aliases[(name, alias)] = (time.monotonic(), version)
        return version

    # -------------------------------------------------------------------- loading
    def expected_bytes(self, model: ServedModel) -> int:
        measured = self.measured.get((model.manifest.digest, model.engine))
        if measured:
            return measured
        return estimate_bytes(self.settings, model.manifest, model.engine)

    def resident_bytes(self) -> int:
        return sum(m.resident_bytes() for m in self.models if m.gateway is not None)

    def retry_after_s(self, model: ServedModel) -> float:
        return max(1.0, (model.load_seconds or FIRST_LOAD_RETRY_S) + 1.0)

    async def _ready(self, model: ServedModel) -> Gateway | JSONResponse:
        if model.gateway is not None:
            return model.gateway
        if self.closing:
            return openai_error(503, "the gateway is shutting down", "shutting_down",
                                "server_error", 5)
        if model.failure is not None and model.loading is None:
            when, why = model.failure
            if time.monotonic() - when < LOAD_FAILURE_HOLD_S:
                return _load_failed(model, why)
        if model.loading is None:
            model.loading = asyncio.create_task(self._load(model),
                                                name=f"sutazai-load-{model.key}")
            model.loading.add_done_callback(lambda task: self._loaded(model, task))
        try:
            return await asyncio.wait_for(asyncio.shield(model.loading), self.load_wait_s)
        except TimeoutError:
            doing = model.waiting or "is loading"
            return openai_error(
                503, f"model {model.key} {doing} and was not ready within "
                f"{self.load_wait_s:g}s (serve_load_wait_s); retry", "model_loading",
                "server_error", self.retry_after_s(model))
        except LoadRefused as exc:
            return exc.response

    def _loaded(self, model: ServedModel, task: asyncio.Task[Gateway]) -> None:
        model.loading = None
        model.waiting = None
        if not task.cancelled():
            task.exception()  # retrieved: the waiters got it

    async def _load(self, model: ServedModel) -> Gateway:
        assert self._memory is not None and self._changed is not None and self.loop
        async with self._memory:  # one load at a time: the budget sees every change
            if model.gateway is not None:
                return model.gateway
            need = self.expected_bytes(model)
            budget = self.budget_bytes
            if budget and need > budget:
                why = (f"it needs about {need / MIB:.0f} MiB and the memory budget is "
                       f"{budget / MIB:.0f} MiB (serve_memory_budget_mib): raise the budget "
                       "or serve a smaller quantisation")
                self.metrics.loads.labels(model.key, "failed").inc()
                await self._audit("model.load", model, "error", {"error": why})
                refusal = openai_error(507, f"model {model.key} cannot be loaded: {why}",
                                       "model_too_large", "server_error")
                refusal.headers["x-should-retry"] = "false"
                raise LoadRefused(refusal, why)
            evicted: list[str] = []
            while budget and self.resident_bytes() + need > budget:
                idle = [m for m in self.models if m.gateway is not None and not m.busy]
                if idle:
                    victim = min(idle, key=lambda m: m.last_used)
                    await self._unload(victim, evicted_for=model)
                    evicted.append(victim.key)
                    continue
                if model.leases == 0:
                    raise LoadRefused(openai_error(503, f"no request waits for {model.key} "
                                                   "any more", "model_loading", "server_error",
                                                   5), "abandoned")
                busy = ", ".join(m.key for m in self.models if m.gateway is not None)
                model.waiting = (f"is waiting for memory ({busy} answering requests hold "
                                 f"{self.resident_bytes() / MIB:.0f} of "
                                 f"{budget / MIB:.0f} MiB)")
                self._changed.clear()
                await self._changed.wait()
            model.waiting = None
            started = time.monotonic()
            starting = self.loop.run_in_executor(
                self._starter, self.start_engine, self.settings, model.manifest, model.engine)
            try:
                engine = await asyncio.shield(starting)
            except asyncio.CancelledError:  # shutting down: the engine still comes; stop it
                starting.add_done_callback(_stop_started)
                raise
            except Exception as exc:
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                LOG.error("model %s did not load: %s", model.manifest.ref, exc)
                self.metrics.loads.labels(model.key, "failed").inc()
                model.failure = (time.monotonic(), why)
                await self._audit("model.load", model, "error",
                                  {"error": str(exc)[:2000], "evicted": evicted})
                raise LoadRefused(_load_failed(model, why), why) from None
            if self.closing:
                await asyncio.to_thread(engine.stop)
                raise LoadRefused(openai_error(503, "the gateway is shutting down",
                                               "shutting_down", "server_error", 5), "closing")
            gateway = Gateway(engine, owns_engine=True, feedback=self.feedback,
                              restart=self.restart, metrics=self.metrics, label=model.key)
            await gateway.start()
            model.gateway = gateway
            model.watcher = asyncio.create_task(gateway.watch(),
                                                name=f"sutazai-engine-watch-{model.key}")
            model.admitted_bytes = need
            model.load_seconds = time.monotonic() - started
            model.failure = None
            model.last_used = time.monotonic()
            self.metrics.loads.labels(model.key, "ok").inc()
            self.metrics.models_loaded.set(sum(m.loaded for m in self.models))
            self.metrics.model_memory.labels(model.key).set(need)
            LOG.warning("loaded %s on %s in %.1fs (about %.0f MiB%s)", model.manifest.ref,
                        engine.engine, model.load_seconds, need / MIB,
                        f"; evicted {', '.join(evicted)}" if evicted else "")
            await self._audit("model.load", model, "ok", {
                "load_s": round(model.load_seconds, 3), "expected_bytes": need,
                "budget_bytes": budget or None, "evicted": evicted})
            return gateway

    async def _unload(self, model: ServedModel, evicted_for: ServedModel | None = None
                      ) -> None:
        """Stop a model's engine. With ``evicted_for``, it is an eviction: counted and
        audited. Called only for an idle model (or at shutdown)."""
        gateway, watcher = model.gateway, model.watcher
        assert gateway is not None
        model.gateway, model.watcher = None, None  # new requests now load it again
        engine = gateway.engine
        peak = engine.peak_rss_bytes
        if peak:
            self.measured[(model.manifest.digest, model.engine)] = peak
        restarted = gateway.begin_closing()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        current = await gateway.close()
        for running in {id(e): e for e in (current.engine, engine, *restarted)}.values():
            await asyncio.to_thread(running.stop)
        self.metrics.forget(current.engine, model.key)
        self.metrics.models_loaded.set(sum(m.loaded for m in self.models))
        if evicted_for is not None:
            self.metrics.evictions.labels(model.key).inc()
            LOG.warning("evicted %s (idle, peak %.0f MiB) to make room for %s",
                        model.manifest.ref, (peak or 0) / MIB, evicted_for.manifest.ref)
            await self._audit("model.evict", model, "ok", {
                "for": evicted_for.manifest.ref, "peak_rss_bytes": peak,
                "budget_bytes": self.budget_bytes or None})

    async def _audit(self, action: str, model: ServedModel, result: str,
                     details: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(audit, self.settings, action, model.manifest.ref,
                                    result=result,  # type: ignore[arg-type]
                                    details={"engine": model.engine, "model": model.key,
                                             **details})
        except SutazAIError:  # the log says so; serving goes on
            LOG.exception("could not record %s of %s in the audit log", action, model.key)

    # --------------------------------------------------------- champion changes
    def adopt_threadsafe(self, key: str, manifest: Manifest, engine: str) -> bool:
        """From the champion watcher: point an unloaded model at a new champion (True), so
        its next request loads the new one; False when it is loaded (swap it instead)."""
        if self.loop is None or self.loop.is_closed():
            raise SutazAIError("the gateway is not running")
        future = asyncio.run_coroutine_threadsafe(self._adopt(key, manifest, engine),
                                                  self.loop)
        return future.result(60)

    async def _adopt(self, key: str, manifest: Manifest, engine: str) -> bool:
        model = self._by_key(key)
        if model.gateway is not None or model.loading is not None:
            return False
        model.manifest, model.engine, model.failure = manifest, engine, None
        self._name_models()
        return True

    def swap_threadsafe(self, key: str, engine: RunningEngine, timeout_s: float = 600.0
                        ) -> None:
        """From the champion watcher: the loaded model ``key`` now serves ``engine``
        (requests in flight finish on the old one, which is stopped after them)."""
        if self.loop is None or self.loop.is_closed():
            raise SutazAIError("the gateway is not running")
        asyncio.run_coroutine_threadsafe(self._swap(key, engine), self.loop).result(timeout_s)

    async def _swap(self, key: str, engine: RunningEngine) -> None:
        model = self._by_key(key)
        model.manifest, model.engine = engine.manifest, engine.engine
        self._name_models()
        if model.gateway is None:  # evicted meanwhile: the new engine is simply loaded
            gateway = Gateway(engine, owns_engine=True, feedback=self.feedback,
                              restart=self.restart, metrics=self.metrics, label=model.key)
            await gateway.start()
            model.gateway = gateway
            model.watcher = asyncio.create_task(gateway.watch())
            model.admitted_bytes = self.expected_bytes(model)
            model.last_used = time.monotonic()
            self.metrics.models_loaded.set(sum(m.loaded for m in self.models))
            return
        model.gateway.label_fixed = model.key
        await model.gateway.swap(engine)

    def _by_key(self, key: str) -> ServedModel:
        for model in self.models:
            if key in (model.key, model.task):
                return model
        raise NotFoundError(f"no served model {key!r}")

    # ----------------------------------------------------------- listing, health
    async def models_response(self) -> Response:
        return JSONResponse({"object": "list", "data": [self.describe(m) for m in self.models]})

    def describe(self, model: ServedModel) -> dict[str, Any]:
        status = model.gateway.status()[0] if model.gateway is not None else (
            "loading" if model.loading is not None else "unloaded")
        return {"id": model.key, "object": "model",
                "created": int(model.manifest.created.timestamp()), "owned_by": "sutazai",
                "version": model.manifest.ref, "engine": model.engine, "task": model.task,
                "loaded": model.loaded, "status": status,
                "in_flight": model.leases}

    def live(self) -> dict[str, Any]:
        described = [self.describe(m) for m in self.models]
        bad = [d for d in described if d["status"] in ("degraded", "restarting", "failed")]
        return {"status": "degraded" if bad else "ok", "models": described,
                "resident_bytes": self.resident_bytes(),
                "budget_bytes": self.budget_bytes or None,
                "reason": "; ".join(f"{d['id']}: {d['status']}" for d in bad) or None}

    async def ready(self) -> tuple[int, dict[str, Any]]:
        """200 unless a loaded model's engine is down for good: one model restarting must
        not take every other model out of the load balancer."""
        body = self.live()
        failed = any(d["status"] == "failed" for d in body["models"])
        return (503 if failed else 200), body


def _stop_started(started: asyncio.Future[RunningEngine]) -> None:
    if not started.cancelled() and started.exception() is None:
        started.result().stop()


def _message(response: Response) -> str:
    """The message of an OpenAI-style error response."""
    try:
        return str(json.loads(bytes(response.body))["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def _load_failed(model: ServedModel, why: str) -> JSONResponse:
    response = openai_error(500, f"model {model.key} could not be loaded: {why}",
                            "model_load_failed", "server_error")
    response.headers["x-should-retry"] = "false"  # the openai client would retry a 500
    return response


class RouterRouting:
    """:class:`~sutazai.serving.gateway.Routing` over a :class:`ModelRouter`."""

    def __init__(self, router: ModelRouter) -> None:
        self.router = router
        self.metrics = router.metrics
        self.feedback = router.feedback

    @property
    def default_label(self) -> str:
        return ""

    async def start(self) -> None:
        await self.router.start()

    async def stop(self) -> None:
        await self.router.stop()

    async def route(self, payload: dict[str, Any]) -> Lease | Response:
        return await self.router.route(payload)

    async def models(self) -> Response | None:
        return await self.router.models_response()

    async def chat(self) -> Lease | str:
        return await self.router.chat_lease()

    def live(self) -> dict[str, Any]:
        return self.router.live()

    async def ready(self) -> tuple[int, dict[str, Any]]:
        return await self.router.ready()


class ChampionSlot:
    """The champion watcher's hold on one task among many models: it swaps (or, when the
    champion is not loaded, retargets) that task's model only."""

    def __init__(self, router: ModelRouter, task: str) -> None:
        self.router = router
        self.task = task

    def swap_threadsafe(self, engine: RunningEngine, timeout_s: float = 600.0) -> None:
        self.router.swap_threadsafe(self.task, engine, timeout_s)

    def adopt(self, choice: TaskChoice) -> bool:
        from sutazai.repository import open_repository

        manifest = open_repository(self.router.settings).get(choice.model,
                                                              choice.repository_version)
        return self.router.adopt_threadsafe(self.task, manifest, choice.engine)
