"""Serve a repository version: resolve what to serve, start its engine, front it.

``NAME`` is the latest version, ``NAME:VERSION`` one version, ``NAME@ALIAS`` the version an
MLflow alias points at, and nothing at all the champion of the default task, on the
engine the selection chose for it.

Several names, or every task's champion (``--champions``), are served behind one endpoint
by :mod:`sutazai.serving.multi` (:func:`serving_many`, :func:`serve_many_forever`): each is
resolved here first, so an unknown name fails before any engine starts.

``sutazai serve`` also answers from the knowledge graph of its home (``/v1/knowledge/...``
and the model ``knowledge``: :class:`~sutazai.serving.gateway.KnowledgeApi`).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from sutazai.config import Settings
from sutazai.errors import ConfigError, NotFoundError
from sutazai.observability.tracing import instrument_app
from sutazai.registry import open_registry
from sutazai.registry.task_aliases import CHAMPION, TaskAliases, current_aliases
from sutazai.repository import open_repository
from sutazai.repository.manifest import Manifest, parse_ref
from sutazai.security.access import AccessGuard
from sutazai.security.audit import audit
from sutazai.security.tls import ServerTLS
from sutazai.serving.engines import ENGINES, RunningEngine, start_engine
from sutazai.serving.gateway import GatewayThread, create_app, routed_app
from sutazai.serving.multi import ChampionSlot, ModelRouter, RouterRouting
from sutazai.serving.process import free_port, require_free_port
from sutazai.serving.supervision import EngineRestart, FeedbackSink, RestartOutcome

log = logging.getLogger(__name__)

_ALIAS = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Target:
    """What to serve and, when the selection chose it, on which engine."""

    manifest: Manifest
    engine: str | None = None
    concurrency: int | None = None
    task: str | None = None  # set when serving a task's champion: follow it when it changes


def resolve_target(settings: Settings, spec: str | None) -> Target:
    repo = open_repository(settings)
    if spec is None:
        choice = TaskAliases(open_registry(settings)).require(settings.default_task)
        return Target(repo.get(choice.model, choice.repository_version), choice.engine,
                      choice.concurrency, settings.default_task)
    name, at, alias = spec.partition("@")
    if at:
        if not _ALIAS.match(alias):
            raise NotFoundError(f"{spec!r}: an alias is letters, digits, '.', '_' or '-'")
        parse_ref(name)  # refuses a name that is not a model name ('../x') before any read
        repo.get(name)  # an unknown model fails here, before MLflow is asked
        version = open_registry(settings).repository_version_for_alias(name, alias)
        return Target(repo.get(name, version))
    name, version_number = parse_ref(spec)
    return Target(repo.get(name, version_number))


def resolve_targets(settings: Settings, specs: Sequence[str], champions: bool = False
                    ) -> list[Target]:
    """Everything ``sutazai serve NAME... | --champions`` serves, resolved before any
    engine starts (an unknown name or alias fails here)."""
    if champions and specs:
        raise ConfigError("name models or pass --champions, not both")
    if champions:
        return champion_targets(settings)
    if not specs:
        return [resolve_target(settings, None)]
    return [resolve_target(settings, spec) for spec in specs]


def champion_targets(settings: Settings) -> list[Target]:
    """The champion of every task that has one, as every view reads the aliases
    (:func:`~sutazai.registry.task_aliases.current_aliases`)."""
    repo = open_repository(settings)
    champions = current_aliases(settings).choices(CHAMPION)
    # a champion measured in-process (a spaCy NER pipeline) has no API engine to serve it
    servable = {task: choice for task, choice in champions.items() if choice.engine in ENGINES}
    for task in sorted(set(champions) - set(servable)):
        log.info("not serving the %s champion %s: its engine %s runs in-process, not behind "
                 "the API", task, champions[task].ref, champions[task].engine)
    targets = [Target(repo.get(choice.model, choice.repository_version), choice.engine,
                      choice.concurrency, task) for task, choice in servable.items()]
    if not targets:
        raise NotFoundError(
            ("no task has a champion yet" if not champions else
             f"no champion an API engine serves ({', '.join(sorted(champions))} only)")
            + ": run 'make run' (or 'sutazai bench run' then 'sutazai bench select') first, "
            "or name the models: sutazai serve NAME [NAME...]")
    return targets


def model_router(settings: Settings, targets: Sequence[Target], engine_name: str | None,
                 *, heal: bool, feedback: FeedbackSink | None = None) -> ModelRouter:
    """The router of ``targets`` under the settings' memory budget and load wait."""
    return ModelRouter.from_settings(settings, [(t.manifest, t.engine, t.task) for t in targets],
                                     engine_name, feedback=feedback,
                                     restart=engine_restart(settings) if heal else None)


def engine_restart(settings: Settings) -> EngineRestart:
    """How a gateway restarts a dead engine: the same version on the same engine, started as
    at first, with the settings' limits; each attempt is audited (``engine.restart``)."""

    def start_like(dead: RunningEngine) -> RunningEngine:
        return start_engine(settings, dead.manifest, dead.engine)

    def record(engine: RunningEngine, outcome: RestartOutcome, details: dict[str, object]
               ) -> None:
        audit(settings, "engine.restart", engine.manifest.ref,
              result=outcome, details=details)

    return EngineRestart(start_like, max_restarts=settings.engine_restart_max,
                         window_s=settings.engine_restart_window_s,
                         backoff_s=settings.engine_restart_backoff_s,
                         backoff_max_s=settings.engine_restart_backoff_max_s,
                         wait_s=settings.engine_wait_s, record=record)


@contextlib.contextmanager
def serving(settings: Settings, manifest: Manifest, engine_name: str | None = None,
            host: str = "127.0.0.1", port: int = 0, *, heal: bool = False
            ) -> Iterator[tuple[RunningEngine, str]]:
    """The engine plus SutazAI's gateway in a background thread; yields (engine, base URL).

    Port 0 picks a free port for the gateway. ``heal`` restarts the engine when it dies, as
    ``sutazai serve`` does (off for benchmarks: a restarted engine would skew them; the
    engine yielded is then the first one).
    """
    if port:
        require_free_port(host, port)
    running = start_engine(settings, manifest, engine_name)
    app = None
    try:
        if not port:
            port = free_port()
        app = create_app(running, restart=engine_restart(settings) if heal else None)
        instrument_app(app, settings)
        app.state.routing.metrics.show_cost(settings)  # the node's price, if set
        with GatewayThread(app, host, port) as gateway:
            yield running, gateway.url
    finally:
        if app is not None:
            app.state.gateway.engine.stop()
        running.stop()


@contextlib.contextmanager
def serving_many(settings: Settings, targets: Sequence[Target], engine_name: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, *, heal: bool = False
                 ) -> Iterator[tuple[ModelRouter, str]]:
    """Several models behind one gateway in a background thread, none loaded yet; yields
    (router, base URL). Like :func:`serving`, for tests and benchmarks."""
    if port:
        require_free_port(host, port)
    router = model_router(settings, targets, engine_name, heal=heal)
    app = routed_app(RouterRouting(router))
    instrument_app(app, settings)
    app.state.routing.metrics.show_cost(settings)  # the node's price, if set
    try:
        with GatewayThread(app, host, port or free_port()) as gateway:
            yield router, gateway.url
    finally:
        router.stop_now()  # whatever the app's shutdown did not get to


def feedback_sink(settings: Settings) -> FeedbackSink | None:
    """The learning data store when request logging is on (it is opt-in), else None."""
    if not settings.request_logging:
        return None
    from sutazai.learning.datastore import FeedbackStore

    return FeedbackStore.open(settings)


def serve_forever(settings: Settings, target: Target, engine_name: str | None, host: str,
                  port: int, announce: Callable[[RunningEngine, str], None]) -> None:
    """Serve in the foreground until SIGINT/SIGTERM, then stop the engine.

    Serving a task's champion, a watcher follows the champion alias and switches to a new
    one without downtime (:mod:`sutazai.serving.rollout`). API keys (unless
    ``auth_required`` is off) and TLS are checked before the engine starts, so a missing key
    table or a bad certificate fails in a second, not after a model load.
    """
    from sutazai.security.tls import server_tls

    require_free_port(host, port)
    guard = AccessGuard(settings).require_keys() if settings.auth_required else None
    with server_tls(settings) as tls:
        running = start_engine(settings, target.manifest, engine_name or target.engine)
        _serve(settings, target, running, engine_name, host, port, announce, guard, tls)


def _serve(settings: Settings, target: Target, running: RunningEngine, engine_name: str | None,
           host: str, port: int, announce: Callable[[RunningEngine, str], None],
           guard: AccessGuard | None, tls: ServerTLS | None) -> None:
    import uvicorn

    from sutazai.serving.rollout import ChampionWatcher

    watcher, app = None, None
    url = f"{'https' if tls else 'http'}://{host}:{port}"
    try:
        app = create_app(running, owns_engine=True, feedback=feedback_sink(settings),
                         guard=guard, restart=engine_restart(settings), knowledge=settings)
        instrument_app(app, settings)
        app.state.routing.metrics.show_cost(settings)  # the node's price, if set
        if target.task and not engine_name and settings.serve_watch_interval_s > 0:
            watcher = ChampionWatcher(
                settings, app.state.gateway, target.task,
                (target.manifest.name, target.manifest.version, running.engine),
                settings.serve_watch_interval_s).start()
        announce(running, url)
        audit(settings, "serve.start", running.manifest.ref,
              details={"engine": running.engine, "address": url, "auth": guard is not None,
                       "mutual_tls": bool(tls and tls.mutual)})
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                    **(tls.uvicorn_options() if tls else {}))
    finally:
        if watcher is not None:
            watcher.stop()
        if app is not None:  # after a swap, the engine serving is no longer `running`
            app.state.gateway.engine.stop()
        running.stop()
        audit(settings, "serve.stop", target.manifest.ref, details={"address": url})


def serve_many_forever(settings: Settings, targets: Sequence[Target], engine_name: str | None,
                       host: str, port: int, announce: Callable[[ModelRouter, str], None]
                       ) -> None:
    """Serve several models on one endpoint until SIGINT/SIGTERM; engines start on demand.

    Serving task champions (``--champions``), one watcher per task follows its champion
    alias (:mod:`sutazai.serving.rollout`). Keys and TLS are checked first, as for one model.
    """
    import uvicorn

    from sutazai.security.tls import server_tls
    from sutazai.serving.rollout import ChampionWatcher

    require_free_port(host, port)
    guard = AccessGuard(settings).require_keys() if settings.auth_required else None
    with server_tls(settings) as tls:
        router = model_router(settings, targets, engine_name, heal=True,
                              feedback=feedback_sink(settings))
        app = routed_app(RouterRouting(router), guard=guard, knowledge=settings)
        instrument_app(app, settings)
        app.state.routing.metrics.show_cost(settings)  # the node's price, if set
        url = f"{'https' if tls else 'http'}://{host}:{port}"
        refs = ",".join(m.manifest.ref for m in router.models)
        watchers = []
        try:
            if not engine_name and settings.serve_watch_interval_s > 0:
                for model in router.models:
                    if model.task is None:
                        continue
                    slot = ChampionSlot(router, model.task)
                    watchers.append(ChampionWatcher(
                        settings, slot, model.task,
                        (model.manifest.name, model.manifest.version, model.engine),
                        settings.serve_watch_interval_s, adopt=slot.adopt).start())
            announce(router, url)
            audit(settings, "serve.start", refs,
                  details={"models": [m.manifest.ref for m in router.models],
                           "memory_budget_bytes": router.budget_bytes or None,
                           "address": url, "auth": guard is not None,
                           "mutual_tls": bool(tls and tls.mutual)})
            uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                        **(tls.uvicorn_options() if tls else {}))
        finally:
            for watcher in watchers:
                watcher.stop()
            router.stop_now()
            audit(settings, "serve.stop", refs, details={"address": url})
