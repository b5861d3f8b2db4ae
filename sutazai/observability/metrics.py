"""Batch metrics pushed to a Prometheus Pushgateway: pipeline runs, champions, repository,
knowledge graph (infra/README.md, "Metric contract", names and labels exactly).

Pipelines, the nightly monitor and graph ingests run as short-lived processes that have
no ``/metrics`` for Prometheus to scrape, so their figures are pushed when they end, as
gauges of the last run and Unix timestamps (a batch job cannot keep a counter across
runs). Each push builds a fresh ``CollectorRegistry``: the process-global one would also
carry whatever else the process registered.

Groups and methods, so the Pushgateway always holds the right set of series:

- ``job=sutazai-pipelines, pipeline=<name>``: ``pushadd`` (POST) replaces only the metric
  names pushed, so a failed run's push keeps the last success time (and a success keeps
  the last failure time, which the alerts compare with it); the graph gauges of the
  ingest pipeline share the group and survive the run push that follows them.
- ``job=sutazai-monitoring, task=<task>``: PUT, the whole group per task, so metrics no
  longer measured disappear.
- ``job=sutazai-repository``: PUT.

Nothing is pushed while ``pushgateway_url`` is unset, and a push that fails is a logged
warning: observability must never fail the run it observes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Gauge

from sutazai.observability import tracing

if TYPE_CHECKING:
    from sutazai.config import Settings
    from sutazai.knowledge.models import GraphStats, IngestReport
    from sutazai.learning.monitoring import Regression
    from sutazai.repository.store import Repository

LOG = logging.getLogger(__name__)
PIPELINES_JOB = "sutazai-pipelines"
MONITORING_JOB = "sutazai-monitoring"
REPOSITORY_JOB = "sutazai-repository"
KNOWLEDGE_PIPELINE = "sutazai-knowledge-ingest"
NIGHTLY_PIPELINE = "sutazai-nightly"
PUSH_TIMEOUT_S = 5.0
# prometheus_client's push handler: (url, method, timeout, headers, data) -> send function
Handler = Callable[[str, str, float | None, list[tuple[str, str]], bytes], Callable[[], None]]


def pipeline_label(name: str) -> str:
    """The KFP pipeline name the alerts select on: ``nightly`` -> ``sutazai-nightly``."""
    label = name.strip().replace("_", "-")
    return label if label.startswith("sutazai-") else f"sutazai-{label}"


def redacted(url: str) -> str:
    """``url`` without a password, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _target(url: str) -> tuple[str, Handler | None]:
    """The Pushgateway address and, when the URL carries ``user:password@``, a handler that
    sends them as HTTP basic auth (urllib would otherwise ignore them)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.username is None:
        return urlunsplit(parts), None
    from prometheus_client.exposition import basic_auth_handler

    user, password = parts.username, parts.password or ""
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    clean = urlunsplit(parts._replace(netloc=netloc))

    def handler(url: str, method: str, timeout: float | None, headers: list[tuple[str, str]],
                data: bytes) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, user, password)

    return clean, handler


def push(settings: Settings, job: str, registry: CollectorRegistry,
         grouping_key: Mapping[str, str] | None = None, *, replace: bool = False) -> bool:
    """Push ``registry`` to the group (``job`` + ``grouping_key``); True when it was pushed.

    ``replace`` PUTs (the group becomes exactly ``registry``); otherwise POST replaces only
    the metric names in ``registry``. Never raises for a Pushgateway problem.
    """
    url = settings.pushgateway_url
    if not url:
        return False
    from prometheus_client import push_to_gateway, pushadd_to_gateway
    from prometheus_client.exposition import default_handler

    gateway, handler = _target(url)
    method = push_to_gateway if replace else pushadd_to_gateway
    try:
        method(gateway, job=job, registry=registry, grouping_key=dict(grouping_key or {}),
               timeout=PUSH_TIMEOUT_S, handler=handler or default_handler)
    except Exception as exc:  # any network or HTTP problem: log, never fail the run
        LOG.warning("could not push %s metrics %s to the Pushgateway at %s: %s; the run "
                    "goes on without them (check SUTAZAI_PUSHGATEWAY_URL)", job,
                    dict(grouping_key or {}), redacted(url), exc)
        return False
    return True


# ------------------------------------------------------------------------ pipeline runs
def pipeline_run_registry(pipeline: str, *, succeeded: bool, seconds: float,
                          ended: float | None = None) -> CollectorRegistry:
    ended = time.time() if ended is None else ended
    registry = CollectorRegistry()
    Gauge("sutazai_pipeline_last_run_timestamp_seconds", "Unix time the last run ended",
          ["pipeline"], registry=registry).labels(pipeline).set(ended)
    Gauge("sutazai_pipeline_duration_seconds", "Wall time of the last run", ["pipeline"],
          registry=registry).labels(pipeline).set(seconds)
    if succeeded:
        Gauge("sutazai_pipeline_last_success_timestamp_seconds",
              "Unix time of the last successful end", ["pipeline"],
              registry=registry).labels(pipeline).set(ended)
    else:
        Gauge("sutazai_pipeline_last_failure_timestamp_seconds",
              "Unix time of the last failed end", ["pipeline"],
              registry=registry).labels(pipeline).set(ended)
    return registry


def record_pipeline_run(settings: Settings, pipeline: str, *, succeeded: bool, seconds: float,
                        ended: float | None = None) -> bool:
    """Push the end of one pipeline run (its duration, end time, success or failure)."""
    label = pipeline_label(pipeline)
    registry = pipeline_run_registry(label, succeeded=succeeded, seconds=seconds, ended=ended)
    return push(settings, PIPELINES_JOB, registry, {"pipeline": label})


@dataclass
class PipelineRunRecord:
    """Handed to the body of :func:`pipeline_run`; ``fail()`` marks a run that returned
    normally but did not do its job (the cycle stopped on a corrupt repository)."""

    pipeline: str
    succeeded: bool = True
    seconds: float = 0.0
    reason: str = ""

    def fail(self, reason: str = "") -> None:
        self.succeeded, self.reason = False, reason


@contextlib.contextmanager
def pipeline_run(settings: Settings, pipeline: str, **attributes: Any
                 ) -> Iterator[PipelineRunRecord]:
    """One pipeline run: a root span ``pipeline <name>`` published to the steps' processes
    in ``TRACEPARENT``, and its end pushed as metrics (an exception is a failed run)."""
    label = pipeline_label(pipeline)
    tracing.ensure_tracing(settings)
    record = PipelineRunRecord(label)
    started = time.monotonic()
    try:
        with tracing.span(f"pipeline {label}", **{"sutazai.pipeline": label, **attributes}
                            ) as current, tracing.exported_context():
            try:
                yield record
            except BaseException:
                record.succeeded = False
                raise
            finally:
                current.set_attribute("sutazai.succeeded", record.succeeded)
                if record.reason:
                    current.set_attribute("sutazai.failure", record.reason)
    finally:
        record.seconds = time.monotonic() - started
        record_pipeline_run(settings, label, succeeded=record.succeeded, seconds=record.seconds)
        tracing.flush()


# ----------------------------------------------------------------------------- champions
@dataclass(frozen=True)
class ChampionFigures:
    """One task's champion after tonight and how its watched metrics moved."""

    task: str
    model: str | None = None
    version: int | None = None
    measured: tuple[str, ...] = ()
    changes: Mapping[str, float] | None = None  # metric -> relative change, positive worse
    regressed: frozenset[str] = frozenset()


def champion_registry(figures: ChampionFigures) -> CollectorRegistry:
    registry = CollectorRegistry()
    task = figures.task
    regression = Gauge("sutazai_champion_regression", "1 if tonight's champion regressed on "
                       "the metric, else 0", ["task", "metric"], registry=registry)
    for metric in figures.measured:
        regression.labels(task, metric).set(1 if metric in figures.regressed else 0)
    change = Gauge("sutazai_champion_change_ratio", "Relative change against the median of "
                   "earlier nights, positive is worse", ["task", "metric"], registry=registry)
    for metric, value in sorted((figures.changes or {}).items()):
        if math.isfinite(value):
            change.labels(task, metric).set(value)
    if figures.model is not None and figures.version is not None:
        Gauge("sutazai_champion_info", "1 for the task's current champion",
              ["task", "model", "version"], registry=registry
              ).labels(task, figures.model, str(figures.version)).set(1)
    return registry


def push_champion_metrics(settings: Settings, figures: ChampionFigures) -> bool:
    """Replace the task's group with tonight's regression flags, changes and champion."""
    return push(settings, MONITORING_JOB, champion_registry(figures), {"task": figures.task},
                replace=True)


def champion_changes(settings: Settings, task: str, champion: str,
                     tonight: Mapping[str, float]) -> dict[str, float]:
    """Every watched metric's change against the median of the earlier nights' monitor runs
    (the same history and formula as :func:`sutazai.learning.monitoring.find_regressions`,
    which reports only those beyond the tolerance). Read before tonight's run is recorded."""
    from sutazai.learning.monitoring import earlier_nights, find_regressions

    every = find_regressions(task, champion, dict(tonight), earlier_nights(settings, task),
                             -math.inf)
    return {r.metric: r.change for r in every}


def champion_figures(task: str, label: str, tonight: Mapping[str, float],
                     changes: Mapping[str, float], regressions: Iterable[Regression]
                     ) -> ChampionFigures:
    """Figures from the monitor's champion label (``model:version@engine...``)."""
    from sutazai.learning.monitoring import WATCHED

    model: str | None = None
    version: int | None = None
    ref = label.split("@", 1)[0]
    name, _, number = ref.rpartition(":")
    if name and number.isdigit():
        model, version = name, int(number)
    return ChampionFigures(
        task=task, model=model, version=version,
        measured=tuple(m for m in WATCHED if m in tonight), changes=dict(changes),
        regressed=frozenset(r.metric for r in regressions if r.task == task))


# ---------------------------------------------------------------------------- repository
def repository_figures(repository: Repository) -> tuple[int, Counter[tuple[str, str]]]:
    """(bytes of all blobs, versions per (model, format)), read without locks."""
    size = 0
    for shard in os.scandir(repository.blobs_dir):
        if shard.is_dir():
            for blob in os.scandir(shard.path):
                with contextlib.suppress(FileNotFoundError):  # a gc may remove it meanwhile
                    size += blob.stat().st_size
    versions: Counter[tuple[str, str]] = Counter(
        (m.name, m.format) for m in repository.all_versions())
    return size, versions


def repository_registry(repository: Repository) -> CollectorRegistry:
    size, versions = repository_figures(repository)
    registry = CollectorRegistry()
    Gauge("sutazai_repository_size_bytes", "Bytes of all blobs in the content-addressed store",
          registry=registry).set(size)
    gauge = Gauge("sutazai_repository_model_versions", "Versions stored per model and format",
                  ["model", "format"], registry=registry)
    for (model, fmt), count in sorted(versions.items()):
        gauge.labels(model, fmt).set(count)
    return registry


def push_repository_metrics(settings: Settings, repository: Repository | None = None) -> bool:
    """Push the repository's size and versions (after a run that changed it)."""
    if not settings.pushgateway_url:
        return False
    try:
        if repository is None:
            from sutazai.repository import open_repository

            repository = open_repository(settings)
        registry = repository_registry(repository)
    except Exception as exc:  # reading for metrics must not fail the run either
        LOG.warning("could not read the repository for its metrics: %s", exc)
        return False
    return push(settings, REPOSITORY_JOB, registry, replace=True)


# ------------------------------------------------------------------------ knowledge graph
def graph_registry(stats: GraphStats, ingested: IngestReport | None) -> CollectorRegistry:
    registry = CollectorRegistry()
    entities = Gauge("sutazai_graph_entities", "Entities in the graph by type", ["type"],
                     registry=registry)
    for kind, count in sorted(stats.entities_by_type.items()):
        entities.labels(kind).set(count)
    relations = Gauge("sutazai_graph_relations", "Relations in the graph by type", ["type"],
                      registry=registry)
    for kind, count in sorted(stats.relations_by_type.items()):
        relations.labels(kind).set(count)
    if ingested is not None:
        Gauge("sutazai_graph_ingest_documents", "Documents the last run ingested",
              registry=registry).set(ingested.documents_ingested)
        Gauge("sutazai_graph_ingest_chunks", "Chunks the last run wrote",
              registry=registry).set(ingested.chunks)
    return registry


def push_graph_metrics(settings: Settings, stats: GraphStats,
                       ingested: IngestReport | None = None,
                       pipeline: str = KNOWLEDGE_PIPELINE) -> bool:
    """Push the graph's counts (and what the run ingested) in the ingest pipeline's group."""
    label = pipeline_label(pipeline)
    return push(settings, PIPELINES_JOB, graph_registry(stats, ingested), {"pipeline": label})
