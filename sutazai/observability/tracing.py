"""OpenTelemetry traces of serving requests and pipeline steps, off unless asked for.

Tracing is configured from the settings (``otel_exporter``, ``otel_endpoint``,
``otel_service_name``) and, where the settings leave it open, from the standard
``OTEL_*`` variables, so an operator who already exports ``OTEL_TRACES_EXPORTER=otlp`` and
``OTEL_EXPORTER_OTLP_ENDPOINT`` for every service gets SutazAI's spans too. Production
sends OTLP/HTTP to a Jaeger collector (port 4318); ``console`` prints spans for debugging.

Why it costs nothing when off: with no exporter the SDK is never imported and no provider
is created; :func:`span` returns one shared do-nothing context manager and
:func:`instrument_app` adds no middleware at all. Even the ``opentelemetry-api`` package is
imported only once tracing is on (it would add ~20 ms to every command's start).

A pipeline runs each step in its own process (``kfp.local`` subprocesses, Kubeflow pods).
The parent publishes its span in the ``TRACEPARENT`` environment variable (the
convention of the OpenTelemetry environment-carrier proposal) and a step's first span
takes it as parent, so one run is one trace where the environment is inherited.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar

if TYPE_CHECKING:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from starlette.applications import Starlette

    from sutazai.config import Settings

LOG = logging.getLogger(__name__)
TRACEPARENT_ENV = "TRACEPARENT"
TRACESTATE_ENV = "TRACESTATE"
ExporterKind = Literal["none", "otlp", "console"]
# Scraped every few seconds: a span each would drown the requests worth seeing.
UNTRACED_PATHS = frozenset({"/metrics", "/health", "/health/live", "/health/ready"})
ATTRIBUTE_TYPES = (str, bool, int, float)

P = ParamSpec("P")
R = TypeVar("R")


class SpanLike(Protocol):
    """What callers of :func:`span` may do with the span (an SDK span or the no-op one)."""

    def set_attribute(self, key: str, value: Any) -> Any: ...

    def add_event(self, name: str, attributes: Any = None) -> Any: ...

    def is_recording(self) -> bool: ...


class _NoopSpan:
    """A span and its own context manager, shared by every call while tracing is off."""

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def add_event(self, name: str, attributes: Any = None) -> None:
        return None

    def is_recording(self) -> bool:
        return False

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


NOOP_SPAN = _NoopSpan()


@dataclass
class _State:
    configured: bool = False
    provider: TracerProvider | None = None
    tracer: trace.Tracer | None = None
    kind: ExporterKind = "none"


_STATE = _State()
_LOCK = threading.Lock()


def exporter_kind(settings: Settings) -> ExporterKind:
    """The exporter to use: ``OTEL_SDK_DISABLED`` wins, then an explicitly set
    ``SUTAZAI_OTEL_EXPORTER``, then ``OTEL_TRACES_EXPORTER``; default none."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    if "otel_exporter" in settings.model_fields_set:
        return settings.otel_exporter
    env = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if env in ("otlp", "console", "none"):
        return env  # type: ignore[return-value]
    if env:
        LOG.warning("OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console or none); "
                    "traces stay off", env)
    return settings.otel_exporter


def service_name(settings: Settings) -> str:
    """``otel_service_name`` when set explicitly, else ``OTEL_SERVICE_NAME``, else the default."""
    env = os.environ.get("OTEL_SERVICE_NAME", "").strip()
    if env and "otel_service_name" not in settings.model_fields_set:
        return env
    return settings.otel_service_name


def traces_endpoint(settings: Settings) -> str | None:
    """``otel_endpoint`` as the OTLP/HTTP traces URL; None lets the exporter read
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` itself."""
    if not settings.otel_endpoint:
        return None
    base = settings.otel_endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def _otlp_exporter(settings: Settings) -> SpanExporter:
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=settings.otel_endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=traces_endpoint(settings))


def configure_tracing(settings: Settings, exporter: SpanExporter | None = None, *,
                      set_global: bool = True) -> bool:
    """(Re)configure this process's tracing; True when spans are recorded.

    ``exporter`` replaces the one the settings name (tests pass an in-memory exporter; it
    is flushed span by span). Without one and with the exporter ``none``, the SDK is not
    even imported. ``set_global`` also makes the provider OpenTelemetry's global one (the
    first time only: the API refuses to replace it), so other libraries' spans join ours.
    """
    with _LOCK:
        _shutdown_locked()
        kind = "console" if exporter is not None else exporter_kind(settings)
        _STATE.configured = True
        if exporter is None and kind == "none":
            return False
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )

        import sutazai

        resource = Resource.create({"service.name": service_name(settings),
                                    "service.version": sutazai.__version__})
        provider = TracerProvider(resource=resource)
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif kind == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(settings)))
        from opentelemetry import trace

        _STATE.provider, _STATE.kind = provider, kind
        _STATE.tracer = provider.get_tracer("sutazai", sutazai.__version__)
        if set_global and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(provider)
        return True


def ensure_tracing(settings: Settings) -> bool:
    """Configure tracing from ``settings`` once per process; True when spans are recorded.

    Cheap after the first call, so every entry point (a pipeline step, the gateway) can
    call it without knowing whether another already did.
    """
    if not _STATE.configured:
        configure_tracing(settings)
    return _STATE.tracer is not None


def tracing_enabled() -> bool:
    return _STATE.tracer is not None


def flush(timeout_s: float = 5.0) -> None:
    """Send what the batch processor holds (a step process may exit right after)."""
    provider = _STATE.provider
    if provider is not None:
        provider.force_flush(int(timeout_s * 1000))


def shutdown_tracing() -> None:
    """Flush and stop the provider; the next :func:`ensure_tracing` configures again."""
    with _LOCK:
        _shutdown_locked()
        _STATE.configured = False


def _shutdown_locked() -> None:
    provider = _STATE.provider
    _STATE.provider, _STATE.tracer, _STATE.kind = None, None, "none"
    if provider is not None:
        provider.shutdown()


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """OpenTelemetry accepts str/bool/int/float (and lists of them): drop None, str() others."""
    clean: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, ATTRIBUTE_TYPES):
            clean[key] = value
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            clean[key] = list(value)
        else:
            clean[key] = str(value)
    return clean


def _environment_parent() -> otel_context.Context | None:
    """The parent a step's process inherited in ``TRACEPARENT``, when no span is current."""
    from opentelemetry import propagate, trace

    if trace.get_current_span().get_span_context().is_valid:
        return None
    parent = os.environ.get(TRACEPARENT_ENV)
    if not parent:
        return None
    carrier = {"traceparent": parent}
    if os.environ.get(TRACESTATE_ENV):
        carrier["tracestate"] = os.environ[TRACESTATE_ENV]
    return propagate.extract(carrier)


@contextlib.contextmanager
def _live_span(tracer: trace.Tracer, name: str, attributes: Mapping[str, Any]
               ) -> Iterator[SpanLike]:
    with tracer.start_as_current_span(name, context=_environment_parent(),
                                      attributes=_clean(attributes)) as current:
        yield current


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[SpanLike]:
    """A span around a block: ``with span("benchmark", model=ref) as s: ...``.

    An exception leaving the block is recorded on the span and sets its status to error,
    then propagates. With tracing off this returns a shared no-op object (no allocation
    beyond the keyword arguments).
    """
    tracer = _STATE.tracer
    if tracer is None:
        return NOOP_SPAN
    return _live_span(tracer, name, attributes)


@contextlib.contextmanager
def step(settings: Settings, name: str, **attributes: Any) -> Iterator[SpanLike]:
    """One pipeline step as a span ``step <name>`` (attribute ``sutazai.step``).

    The first step of a process configures tracing from ``settings``. The span is flushed
    at its end when it is the process's outermost one, because a step's process exits
    right after its step (KFP subprocesses and pods).
    """
    if not _STATE.configured:
        ensure_tracing(settings)
    if _STATE.tracer is None:
        yield NOOP_SPAN
        return
    from opentelemetry import trace

    outermost = not trace.get_current_span().get_span_context().is_valid
    try:
        with span(f"step {name}", **{"sutazai.step": name, **attributes}) as current:
            yield current
    finally:
        if outermost:
            flush()


def traced(name: str, **attributes: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """:func:`step` around every call of a function whose first argument is the Settings."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            settings = args[0] if args else kwargs.get("settings")
            if _STATE.tracer is None and (_STATE.configured or settings is None):
                return function(*args, **kwargs)  # the fast path: tracing is off
            with step(settings, name, **attributes):  # type: ignore[arg-type]
                return function(*args, **kwargs)

        return run

    return decorate


def current_traceparent() -> dict[str, str]:
    """The current span as W3C headers (``traceparent``, maybe ``tracestate``); {} if none."""
    carrier: dict[str, str] = {}
    if _STATE.tracer is None:
        return carrier
    from opentelemetry import propagate, trace

    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def exported_context() -> Iterator[None]:
    """Publish the current span in ``TRACEPARENT``/``TRACESTATE`` for child processes
    started inside the block (pipeline steps), and restore the old values after."""
    carrier = current_traceparent()
    if not carrier:
        yield
        return
    from sutazai.environ import overlaid

    with overlaid({TRACEPARENT_ENV: carrier["traceparent"],
                   TRACESTATE_ENV: carrier.get("tracestate", "")}):
        yield


# ------------------------------------------------------------------------- ASGI (serving)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TracingMiddleware:
    """A SERVER span per HTTP request, child of the caller's W3C ``traceparent``.

    The request's ``traceparent``/``tracestate`` headers are replaced by this span's before
    the app sees them, so a proxy that forwards the incoming headers (the gateway does, to
    its engine) makes the engine's work a child of this span without knowing about
    tracing. Attributes follow the HTTP semantic conventions: ``http.request.method``,
    ``http.route`` (the route template), ``url.path``, ``http.response.status_code``; a 5xx
    or an exception marks the span as an error. ``describe`` adds attributes per request
    (the gateway's model and engine, which can change on a swap).
    """

    def __init__(self, app: ASGIApp, describe: Callable[[], Mapping[str, Any]] | None = None,
                 untraced: frozenset[str] = UNTRACED_PATHS) -> None:
        self.app = app
        self.describe = describe
        self.untraced = untraced

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = _STATE.tracer
        if tracer is None or scope["type"] != "http" or scope.get("path") in self.untraced:
            await self.app(scope, receive, send)
            return
        from opentelemetry import propagate, trace

        headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or [])
        carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
        method = str(scope.get("method", "GET"))
        attributes: dict[str, Any] = {
            "http.request.method": method, "url.path": scope.get("path", ""),
            "url.scheme": scope.get("scheme", "http"),
            "user_agent.original": carrier.get("user-agent"),
        }
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
        if self.describe is not None:
            with contextlib.suppress(Exception):  # attributes must never fail a request
                attributes.update(self.describe())
        with tracer.start_as_current_span(
                method, context=propagate.extract(carrier), kind=trace.SpanKind.SERVER,
                attributes=_clean(attributes)) as current:
            outgoing: dict[str, str] = {}
            propagate.inject(outgoing)
            forwarded = [(k, v) for k, v in headers
                         if k.lower() not in (b"traceparent", b"tracestate")]
            forwarded += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in outgoing.items()]
            inner = dict(scope, headers=forwarded)
            status: list[int] = []

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status.append(int(message["status"]))
                    current.set_attribute("http.response.status_code", status[0])
                await send(message)

            try:
                await self.app(inner, receive, send_traced)
            except Exception:
                if not status:
                    current.set_attribute("http.response.status_code", 500)
                raise
            finally:
                route = getattr(inner.get("route"), "path", None)
                if route:
                    current.set_attribute("http.route", route)
                    current.update_name(f"{method} {route}")
                endpoint = (inner.get("path_params") or {}).get("path")
                if endpoint:
                    current.set_attribute("sutazai.endpoint", str(endpoint))
            if status and status[0] >= 500:
                current.set_status(trace.Status(trace.StatusCode.ERROR, f"HTTP {status[0]}"))


def _gateway_attributes(app: Starlette) -> Callable[[], Mapping[str, Any]]:
    def describe() -> Mapping[str, Any]:
        gateway = getattr(app.state, "gateway", None)
        if gateway is None:
            return {}
        engine = gateway.engine
        return {"sutazai.model": engine.manifest.ref, "sutazai.engine": engine.engine,
                "sutazai.digest": engine.manifest.digest}

    return describe


def instrument_app(app: Starlette, settings: Settings | None = None) -> bool:
    """Trace every request of ``app`` (a Starlette app not yet started); True if traced.

    With tracing off (the default) the app is left exactly as it was. Call it where the
    app is created: ``instrument_app(create_app(engine), settings)``.
    """
    if settings is None:
        from sutazai.config import load_settings

        settings = load_settings()
    if not ensure_tracing(settings):
        return False
    app.add_middleware(TracingMiddleware, describe=_gateway_attributes(app))
    return True
