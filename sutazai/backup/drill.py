"""The backup drill: a backup is only good once it has been restored and used.

``run_drill`` makes a backup (or takes one given), verifies it, restores it into a scratch
home (removed afterwards) and uses that home the way SutazAI would after a disaster: the
default task's champion is served and asked one question, the graph is queried through the
knowledge store, and what SutazAI reads back (repository versions, MLflow's registered
versions and aliases, learning-store rows, graph documents and chunks) is compared with the
source's counts at the moment of the backup (the manifest's, taken from the snapshot
itself, so writers running meanwhile cannot make a good backup look bad).

The scratch home is isolated from the source: its own SQLite files, repository, audit
log and anchor, no Pushgateway, so nothing done in it reaches production state. A
production backup's PostgreSQL dumps are restored into a throwaway PostgreSQL cluster the
drill starts itself (initdb and start take under a second; fsync off; a one-off password),
never onto the production databases.

Pushed to the Pushgateway (job ``sutazai-backup``, ``pushadd`` so a failed drill keeps the
last success time): ``sutazai_backup_drill_success`` (1/0), ``..._drill_duration_seconds``,
``sutazai_backup_size_bytes`` (when a backup was made or found) and
``sutazai_backup_last_success_timestamp_seconds`` (only when every check passed: a backup
counts as good once it has been proven to restore).
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from sutazai.backup.archive import BackupManifest
from sutazai.backup.service import backup_root, create, restore, verify
from sutazai.config import Settings
from sutazai.embedded_db import sqlite_file
from sutazai.errors import SutazAIError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

LOG = logging.getLogger(__name__)
BACKUP_JOB = "sutazai-backup"
STALE_SCRATCH_S = 86400.0  # a scratch home older than this is a killed drill's
Status = Literal["ok", "failed", "skipped"]


class DrillCheck(BaseModel):
    """One step or comparison: ``skipped`` says why it could not apply (never a failure)."""

    name: str
    status: Status
    source: int | None = None
    restored: int | None = None
    detail: str = ""
    seconds: float = 0.0


class DrillAnswer(BaseModel):
    ref: str
    engine: str
    prompt: str
    text: str
    seconds: float


class DrillReport(BaseModel):
    ok: bool = False
    backup_id: str | None = None
    backup_bytes: int = 0
    started: datetime = Field(default_factory=lambda: datetime.now(UTC))
    seconds: float = 0.0
    checks: list[DrillCheck] = Field(default_factory=list)
    answer: DrillAnswer | None = None
    notes: list[str] = Field(default_factory=list)
    pushed: bool = False

    @property
    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if c.status == "failed"]

    def check(self, name: str) -> DrillCheck:
        return next(c for c in self.checks if c.name == name)


Found = DrillCheck | list[DrillCheck] | None


class _Recorder:
    """Runs each step and times it; an error becomes a failed check, not an exception:
    what breaks while the restored home is used is what the drill is for."""

    def __init__(self, report: DrillReport) -> None:
        self.report = report

    def run(self, name: str, step: Callable[[], Found]) -> bool:
        """Record the step's check(s) (one ``ok`` named ``name`` when it returns None);
        True when none failed."""
        started = time.monotonic()
        try:
            found = step()
        except Exception as exc:  # any error here is the finding the drill reports
            LOG.warning("backup drill: %s failed: %s", name, exc)
            text = str(exc).strip()
            found = DrillCheck(name=name, status="failed",
                               detail=text.splitlines()[0] if text else repr(exc))
        checks = found if isinstance(found, list) else [
            found or DrillCheck(name=name, status="ok")]
        seconds = round(time.monotonic() - started, 3)
        for check in checks:
            check.seconds = seconds
        self.report.checks += checks
        return all(c.status != "failed" for c in checks)


def compare(name: str, source: int | None, restored: int | None, *, skip: str = ""
            ) -> DrillCheck:
    """``source`` against ``restored``; ``skip`` (or no source count) makes it skipped."""
    if skip or source is None:
        return DrillCheck(name=name, status="skipped", source=source, restored=restored,
                          detail=skip or "the backup recorded no count for it")
    same = source == restored
    return DrillCheck(name=name, status="ok" if same else "failed", source=source,
                      restored=restored,
                      detail="" if same else f"{restored} restored, {source} in the source")


def scratch_settings(settings: Settings, home: Path,
                     databases: dict[str, str] | None = None) -> Settings:
    """The settings of a restored home: every store inside it (SQLite) or in the drill's
    scratch PostgreSQL (``databases``: dump name -> URL), no Pushgateway, no external audit
    sink or anchor, so the drill never writes to the source's state."""
    urls = databases or {}

    def store(name: str, file: str) -> str:
        return urls.get(name) or f"sqlite:///{home / file}"

    return settings.model_copy(update={
        "home": home, "profile": "embedded", "repository_dir": None,
        "repository_plaintext_dir": None, "mlflow_tracking_uri": store("mlflow", "mlflow.db"),
        "mlflow_ui_url": None, "learning_db_url": store("learning", "learning.db"),
        "nas_storage_url": store("nas", "nas.db"), "documents_dir": None,
        "learning_inbox": None,
        "pipeline_root": None, "postgres_dir": None, "backup_dir": home / "backups",
        "audit_anchor": None, "audit_sink": None, "pushgateway_url": None, "kg_uri": None,
        "kg_store": "falkordb"})


def learning_rows(settings: Settings) -> int | None:
    """Rows of the learning store; None when it has none to count (no SQLite file yet:
    opening it would create one in the home)."""
    from sutazai.learning.datastore import FeedbackStore

    database = sqlite_file(settings.learning_url)
    if database is not None and not database.is_file():
        return None
    store = FeedbackStore.open(settings)
    try:
        return store.count()
    finally:
        store.close()


def mlflow_registry_counts(settings: Settings) -> dict[str, int]:
    """Registered model versions and aliases, as MLflow's own client reads them."""
    from sutazai.registry import open_registry

    client = open_registry(settings).client
    versions = aliases = 0
    token: str | None = None
    while True:
        models = client.search_registered_models(max_results=1000, page_token=token)
        aliases += sum(len(m.aliases or {}) for m in models)
        token = models.token
        if not token:
            break
    while True:
        found = client.search_model_versions(max_results=1000, page_token=token)
        versions += len(found)
        token = found.token
        if not token:
            break
    return {"mlflow_model_versions": versions, "mlflow_registered_model_aliases": aliases}


@contextmanager
def scratch_databases(settings: Settings, manifest: BackupManifest) -> Iterator[dict[str, str]]:
    """Empty databases for a production backup's dumps, in a PostgreSQL cluster of the
    drill's own (SutazAI's role with a one-off password, carried in the URLs: libpq gets it
    from the environment, never a command line); stopped and removed afterwards. Its
    folder is in the system's temp dir, which the postgres user can reach."""
    names = sorted(manifest.databases)
    if not names:
        yield {}
        return
    from sutazai.production.postgres import LocalPostgres
    from sutazai.serving.process import free_port

    folder = Path(tempfile.mkdtemp(prefix="sutazai-drill-pg-"))
    folder.chmod(0o755)
    cluster = LocalPostgres(folder / "data", free_port(), durable=False)
    password = secrets.token_urlsafe(24)
    try:
        cluster.start()
        databases = {name: f"drill_{name}" for name in names}
        cluster.ensure_role(settings.postgres_user, password, list(databases.values()))
        yield {name: f"postgresql://{settings.postgres_user}:{password}@127.0.0.1:"
                     f"{cluster.port}/{database}" for name, database in databases.items()}
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def scratch_home(settings: Settings, where: Path | None) -> Iterator[Path]:
    """An empty folder next to the backups (the volume sized for a home's copy, which
    /tmp may not be; not the archive's ``tmp``, which a prune empties), removed afterwards
    with any graph server started on it. What a killed drill left there a day ago goes
    first."""
    parent = where or backup_root(settings) / "drill"
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob("drill-*"):
        if old.is_dir() and time.time() - old.stat().st_mtime > STALE_SCRATCH_S:
            _remove_scratch(old)
    home = Path(tempfile.mkdtemp(prefix="drill-", dir=parent))
    try:
        yield home
    finally:
        _remove_scratch(home)


def _remove_scratch(home: Path) -> None:
    from sutazai.knowledge.server import stop_orphans

    if (home / "graph").is_dir():
        stop_orphans(home / "graph", grace_s=5.0)
    shutil.rmtree(home, ignore_errors=True)


def run_drill(settings: Settings, *, backup_id: str | None = None, ask: bool = True,
              question: str = "The capital of France is", scratch: Path | None = None,
              push_metrics: bool = True) -> DrillReport:
    """Create (or take ``backup_id``), verify, restore into a scratch home, use it, compare;
    never raises for what it finds: every finding is a check in the report."""
    started = time.monotonic()
    report = DrillReport()
    steps = _Recorder(report)
    made: list[BackupManifest] = []
    learning: list[int | None] = []  # the source's rows before and after the snapshot

    def make() -> DrillCheck:
        if backup_id is None:  # an older backup's rows at its time are unknown: not compared
            learning.append(learning_rows(settings))
            made.append(create(settings))
            learning.append(learning_rows(settings))
        return DrillCheck(name="create", status="ok",
                          detail=f"drilling the existing backup {backup_id}" if backup_id
                          else f"backup {made[0].id}")

    def check_backup() -> DrillCheck:
        manifest, problems = verify(settings, backup_id or made[0].id)
        made[:] = [manifest]
        return DrillCheck(name="verify", status="failed" if problems else "ok",
                          detail=f"{len(problems)} problem(s): " + "; ".join(problems[:3])
                          if problems else f"{len(manifest.files)} file(s), signature good")

    if steps.run("create", make):
        steps.run("verify", check_backup)  # a damaged backup is still restored: see how
    if made:
        manifest = made[0]
        report.backup_id, report.backup_bytes = manifest.id, manifest.size
        report.notes += manifest.notes
        with scratch_home(settings, scratch) as home:
            _drill_restored(settings, manifest, home, steps, ask=ask, question=question,
                            learning=(learning[0], learning[-1]) if learning else (None, None))
    for check in report.checks:  # a scratch database's one-off password, should it show
        check.detail = re.sub(r"(postgresql://[^:/@\s]+):[^@\s]+@", r"\1:***@", check.detail)
    report.ok = all(c.status != "failed" for c in report.checks)
    report.seconds = round(time.monotonic() - started, 3)
    if push_metrics:
        report.pushed = push_drill(settings, report)
    from sutazai.security.audit import audit

    try:
        audit(settings, "backup.drill", report.backup_id or "-",
              result="ok" if report.ok else "error",
              details={"failures": report.failures, "seconds": report.seconds})
    except SutazAIError as exc:
        report.notes.append(f"the drill could not be audited: {exc}")
    return report


def _drill_restored(settings: Settings, manifest: BackupManifest, home: Path,
                    steps: _Recorder, *, ask: bool, question: str,
                    learning: tuple[int | None, int | None]) -> None:
    databases: dict[str, str] = {}

    def restore_all() -> DrillCheck:
        databases.update(stack.enter_context(scratch_databases(settings, manifest)))
        return _restore(settings, manifest, home, databases)

    with ExitStack() as stack:
        if steps.run("restore", restore_all):
            _use_restored(manifest, scratch_settings(settings, home, databases), steps,
                          ask=ask, question=question, learning=learning)


def _use_restored(manifest: BackupManifest, restored: Settings, steps: _Recorder, *,
                  ask: bool, question: str, learning: tuple[int | None, int | None]) -> None:
    """Use the restored home as SutazAI would, and compare its counts with the source's."""
    paths = {f.path for f in manifest.files}
    paths |= {f"{name}.db" for name in manifest.databases}  # restored into scratch databases
    counts = manifest.counts

    def graph() -> list[DrillCheck]:
        names = ("graph_documents", "graph_chunks")
        if "graph/dump.rdb" not in paths:
            return [compare(n, None, None, skip="no embedded graph in the backup")
                    for n in names]
        from sutazai.knowledge.service import graph_stats

        stats = graph_stats(restored)  # a query through the knowledge store
        return [compare(n, counts.get(n), value)
                for n, value in zip(names, (stats.documents, stats.chunks), strict=True)]

    def repository() -> DrillCheck:
        from sutazai.repository import open_repository

        versions = len(open_repository(restored).all_versions())
        return compare("repository_versions", counts.get("repository_versions"), versions)

    def mlflow() -> list[DrillCheck]:
        if "mlflow.db" not in paths:
            return [compare(n, None, None, skip="MLflow's database is not in the backup (a "
                            "database server: back it up with its own tool)")
                    for n in ("mlflow_model_versions", "mlflow_registered_model_aliases")]
        return [compare(n, counts.get(n), value)
                for n, value in mlflow_registry_counts(restored).items()]

    def rows() -> DrillCheck:
        before, after = learning
        if "learning.db" not in paths:
            return compare("learning_rows", before, None, skip="the learning store is not "
                           "in the backup (none yet, or a database server)")
        found = learning_rows(restored)
        if before is None or after is None or found is None:
            return compare("learning_rows", before, found)
        ok = before <= found <= after  # rows added while the snapshot ran may be in it
        return DrillCheck(name="learning_rows", status="ok" if ok else "failed", source=after,
                          restored=found, detail="" if ok else
                          f"{found} restored, {before}..{after} in the source")

    steps.run("graph", graph)
    steps.run("repository_versions", repository)
    steps.run("mlflow", mlflow)
    steps.run("learning_rows", rows)
    if ask:
        steps.run("answer", lambda: _ask(restored, question, steps.report))
    else:
        steps.run("answer", lambda: DrillCheck(name="answer", status="skipped",
                                               detail="not asked (--no-ask)"))


def _restore(settings: Settings, manifest: BackupManifest, home: Path,
             databases: dict[str, str]) -> DrillCheck:
    # the scratch folder exists, empty; the scratch databases are new, empty
    restore(settings, manifest.id, home, force=True, onto=databases)
    return DrillCheck(name="restore", status="ok", detail=f"{len(manifest.files)} file(s)")


def _ask(settings: Settings, question: str, report: DrillReport) -> DrillCheck:
    """Serve the default task's champion from the restored home (as ``sutazai serve``
    does) and ask it one question. No champion for that task is noted, not failed: there
    is nothing to serve, which is no broken backup; a champion the restored repository
    cannot serve is a failure."""
    from sutazai.registry import open_registry
    from sutazai.registry.task_aliases import TaskAliases
    from sutazai.workflows.nightly import ask_champion

    choice = TaskAliases(open_registry(settings)).get(settings.default_task)
    if choice is None:
        return DrillCheck(name="answer", status="skipped",
                          detail=f"no {settings.default_task} champion in the backup: "
                                 "nothing to serve")
    answer = ask_champion(settings, question)
    if answer is None:
        return DrillCheck(name="answer", status="failed", detail=f"the champion {choice.ref} "
                          "is not in the restored repository")
    report.answer = DrillAnswer(**answer.model_dump())
    if not answer.text.strip():
        return DrillCheck(name="answer", status="failed",
                          detail=f"{answer.ref} on {answer.engine} answered nothing")
    return DrillCheck(name="answer", status="ok",
                      detail=f"{answer.ref} on {answer.engine}: {answer.text.strip()[:80]!r}")


# ---------------------------------------------------------------------- metrics
def drill_registry(report: DrillReport, *, ended: float | None = None) -> CollectorRegistry:
    """The drill's gauges (module docstring); the success time only for a passed drill,
    the size only when there was a backup."""
    from prometheus_client import CollectorRegistry, Gauge

    ended = time.time() if ended is None else ended
    registry = CollectorRegistry()
    Gauge("sutazai_backup_drill_success", "1 if the last backup drill passed every check",
          registry=registry).set(1 if report.ok else 0)
    Gauge("sutazai_backup_drill_duration_seconds", "Wall time of the last backup drill",
          registry=registry).set(report.seconds)
    if report.backup_id is not None:
        Gauge("sutazai_backup_size_bytes", "Bytes of the last drilled backup",
              registry=registry).set(report.backup_bytes)
    if report.ok:
        Gauge("sutazai_backup_last_success_timestamp_seconds",
              "Unix time of the last backup a drill proved to restore",
              registry=registry).set(ended)
    return registry


def push_drill(settings: Settings, report: DrillReport) -> bool:
    """POST (pushadd): a failed drill leaves the last success time in place."""
    from sutazai.observability.metrics import push

    return push(settings, BACKUP_JOB, drill_registry(report))


def as_json(report: DrillReport) -> dict[str, Any]:
    data = report.model_dump(mode="json")
    data["failures"] = report.failures
    return data
