"""Moving an embedded home onto the production profile's PostgreSQL, without loss.

The embedded profile keeps three SQLite files in the home: MLflow's tracking and registry
store (``mlflow.db``), the learning store (``learning.db``) and the NAS studies
(``nas.db``). :func:`migrate` copies each into its PostgreSQL database of the production
profile, row by row, keeping every key: run ids, experiment ids, model versions, aliases,
feedback ids and trial numbers stay what they were, so links and artifact URIs (which point
at ``<home>/mlflow-artifacts``, where the production MLflow server also keeps them) stay
valid.

Why copy rows rather than re-log through each tool's API: the APIs mint new ids and
timestamps (a run logged again is another run), and some rows (aliases, deleted runs,
finished trials' history) cannot be written through them at all. Each tool still creates
its own schema on the target first (MLflow's migrations, ``FeedbackStore``, Optuna's
``RDBStorage``), so the target is exactly what the tool would have made, and source and
target must be at the same schema revision; otherwise nothing is copied and the error says
which to upgrade.

Safe to re-run: a row whose key is already on the target with the same content is counted
as present and left alone; one with the same key but other content is a conflict, and the
store's whole copy is rolled back with an error naming the table. Each store is copied in
one transaction. Afterwards every serial column's sequence is moved past the largest id, so
rows written on the target later get fresh ids.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from sutazai.embedded_db import ALEMBIC_COPY, sqlite_file
from sutazai.errors import SutazAIError
from sutazai.production.databases import connect_args, is_postgres, redacted
from sutazai.progress import NULL_PROGRESS, Progress

if TYPE_CHECKING:
    from sutazai.config import Settings

BATCH = 500
ALEMBIC_TABLE = "alembic_version"


class MigrationError(SutazAIError):
    """A store cannot be moved faithfully: schema revisions differ, the target holds other
    rows under the same keys, or a server cannot be reached."""


@dataclass
class TableCount:
    table: str
    rows: int = 0  # in the source
    copied: int = 0  # new on the target (in a dry run: would be)
    present: int = 0  # already on the target, identical
    kept: int = 0  # on the target with other content, kept on purpose (see _TOLERATED)


@dataclass
class StoreResult:
    store: str
    source: str
    target: str
    revision: str | None = None
    tables: list[TableCount] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def copied(self) -> int:
        return sum(t.copied for t in self.tables)

    @property
    def present(self) -> int:
        return sum(t.present for t in self.tables)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)


@dataclass
class MigrationReport:
    dry_run: bool
    stores: list[StoreResult]
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "seconds": round(self.seconds, 3),
                "stores": [{**asdict(s), "rows": s.rows, "copied": s.copied,
                            "present": s.present} for s in self.stores]}


@dataclass(frozen=True)
class _Store:
    """One embedded store and how its tool makes (and versions) its schema."""

    name: str
    source: str
    target: str
    prepare: Callable[[Engine, str, dict[str, str]], None]  # the tool's schema on the target
    head: Callable[[], str | None]  # the installed tool's schema revision (None: unversioned)
    upgrade_hint: str  # how to bring a database to the installed tool's revision
    # (table, primary key) whose differing target row is kept, with why
    tolerated: dict[tuple[str, tuple[Any, ...]], str] = field(default_factory=dict)


# --------------------------------------------------------------------------- the tools' schemas
def _prepare_mlflow(engine: Engine, url: str, password: dict[str, str]) -> None:
    from mlflow.store.db import utils

    if not utils._all_tables_exist(engine):
        utils._initialize_tables(engine)  # tables, then every migration, as the server does


def _mlflow_head() -> str | None:
    from mlflow.store.db import utils

    return str(utils._get_latest_schema_revision())


def _prepare_learning(engine: Engine, url: str, password: dict[str, str]) -> None:
    from sutazai.learning.datastore import _Base

    _Base.metadata.create_all(engine)  # what FeedbackStore does on first use


def _prepare_optuna(engine: Engine, url: str, password: dict[str, str]) -> None:
    import optuna

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": password},
                                         skip_compatibility_check=True)  # checked below
    storage.remove_session()
    storage.engine.dispose()


def _optuna_head() -> str | None:
    from optuna.storages._rdb.storage import _VersionManager

    manager = _VersionManager.__new__(_VersionManager)  # reads the scripts, no database
    manager.url = ""
    return str(manager.get_head_version())


def stores(embedded: Settings, production: Settings) -> list[_Store]:
    """The three embedded stores of ``embedded``'s home and where they go in ``production``."""
    return [
        _Store("mlflow", embedded.mlflow_store_url, production.mlflow_store_url,
               _prepare_mlflow, _mlflow_head, "mlflow db upgrade {url}",
               {("experiments", (0,)): "the target's Default experiment (made by the "
                "production MLflow server) is kept; runs keep their own artifact URIs"}),
        _Store("learning", embedded.learning_url, production.learning_url,
               _prepare_learning, lambda: None, ""),
        _Store("nas", embedded.nas_storage, production.nas_storage,
               _prepare_optuna, _optuna_head, "optuna storage upgrade --storage {url}",
               {("version_info", (1,)): "the target's Optuna version row is kept (same "
                "schema revision, written by the installed Optuna)"}),
    ]


# --------------------------------------------------------------------------- values
def _aware(value: Any) -> Any:
    """A naive datetime as UTC: SQLite keeps none, SutazAI and the tools write UTC."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _coerce(column: sa.Column[Any], source_type: Any, value: Any) -> Any:
    """``value`` read from SQLite, as the target column takes it."""
    if value is None:
        return None
    kind = column.type
    if isinstance(kind, sa.Boolean):
        return bool(value)  # SQLite: 0/1
    if isinstance(kind, sa.DateTime) and kind.timezone:
        return _aware(value)
    if isinstance(kind, sa.JSON) and isinstance(value, str) and not isinstance(
            source_type, sa.JSON):
        return json.loads(value)  # JSON text in a column SQLite typed as TEXT
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, datetime) and isinstance(b, datetime):
        return bool(_aware(a) == _aware(b))
    return bool(a == b)


def _key(row: dict[str, Any], columns: Sequence[str]) -> tuple[Any, ...]:
    return tuple(_aware(row[c]) for c in columns)


# --------------------------------------------------------------------------- copying
def _revision(connection: Connection) -> str | None:
    if not sa.inspect(connection).has_table(ALEMBIC_TABLE):
        return None
    return connection.execute(sa.text(f"SELECT version_num FROM {ALEMBIC_TABLE}")).scalar()


def _check_source(store: _Store) -> str | None:
    """The source's schema revision, which must be the installed tool's (checked for every
    store before anything is copied). None: the store has no revisions, or no file."""
    head = store.head()
    path = sqlite_file(store.source)
    if head is None or path is None or not path.is_file():
        return None
    engine = sa.create_engine(store.source)
    try:
        with engine.connect() as source:
            found = _revision(source)
    finally:
        engine.dispose()
    if found != head:
        raise MigrationError(
            f"the embedded {store.name} database is at schema revision {found}, the installed "
            f"tool at {head}: back it up, run '{store.upgrade_hint.format(url=store.source)}' "
            "(or any SutazAI command that opens it), then migrate again. Nothing was copied")
    return head


def _check_target(store: _Store, target: Connection) -> None:
    head = store.head()
    there = _revision(target)
    if head is not None and there is not None and there != head:
        raise MigrationError(
            f"the production {store.name} database is at schema revision {there}, the "
            f"installed tool at {head}: run '{store.upgrade_hint.format(url=store.target)}' "
            "with PGPASSWORD set (or upgrade SutazAI on the machine that wrote it), then "
            "migrate again")


def _batches(source: Connection, table: sa.Table, order: Sequence[sa.Column[Any]]
             ) -> Iterator[list[dict[str, Any]]]:
    result = source.execution_options(yield_per=BATCH).execute(
        sa.select(table).order_by(*order))
    for partition in result.mappings().partitions(BATCH):
        yield [dict(row) for row in partition]


def _copy_table(store: _Store, source: Connection, target: Connection | None,
                table: sa.Table, goal: sa.Table | None, count: TableCount,
                notes: list[str], advance: Callable[[int], None]) -> None:
    """Copy ``table``'s rows into ``goal`` (None: the target has no schema yet, a dry run
    counts every row as new)."""
    if goal is None or target is None:
        count.copied = count.rows
        advance(count.rows)
        return
    missing = [c.name for c in table.columns if c.name not in goal.columns]
    if missing:
        raise MigrationError(
            f"{store.name}: the target table {goal.name} has no column {missing[0]!r} that "
            "the embedded one has; the schemas differ although their revisions match. "
            "Nothing was copied")
    pk = [c.name for c in goal.primary_key.columns]
    if not pk:
        raise MigrationError(f"{store.name}: table {goal.name} has no primary key, so a "
                             "re-run could not tell copied rows from new ones; not migrated")
    for batch in _batches(source, table, [table.c[c] for c in pk]):
        rows = [{name: _coerce(goal.c[name], table.c[name].type, value)
                 for name, value in row.items()} for row in batch]
        keys = [_key(row, pk) for row in rows]
        condition = (goal.c[pk[0]].in_([k[0] for k in keys]) if len(pk) == 1
                     else sa.tuple_(*(goal.c[c] for c in pk)).in_(keys))
        existing = {_key(dict(r), pk): dict(r)
                    for r in target.execute(sa.select(goal).where(condition)).mappings()}
        new = []
        for key, row in zip(keys, rows, strict=True):
            there = existing.get(key)
            if there is None:
                new.append(row)
            elif all(_same(row[c], there[c]) for c in row):
                count.present += 1
            elif (goal.name, key) in store.tolerated:
                count.kept += 1
                notes.append(f"{goal.name} {key}: {store.tolerated[(goal.name, key)]}")
            else:
                differs = next(c for c in row if not _same(row[c], there[c]))
                raise MigrationError(
                    f"{store.name}: table {goal.name} on the target already holds a row "
                    f"with key {dict(zip(pk, key, strict=True))} whose {differs!r} differs "
                    "from the embedded one; nothing of this store was copied. The target "
                    "was written to before the migration: migrate into empty databases "
                    "(drop and create them again), or remove the conflicting rows")
        if new:
            statement = pg_insert(goal).on_conflict_do_nothing(index_elements=pk).returning(
                *(goal.c[c] for c in pk))  # the rows really inserted (rowcount is not kept)
            try:
                count.copied += len(target.execute(statement, new).all())
            except sa.exc.DBAPIError as exc:
                raise MigrationError(
                    f"{store.name}: PostgreSQL refused rows of table {goal.name} "
                    f"({str(exc.orig).splitlines()[0]}); nothing of this store was "
                    "copied") from None
        advance(len(batch))


def _reset_sequences(target: Connection, tables: Sequence[sa.Table]) -> None:
    """Move each serial or identity column's sequence past the largest id it now holds."""
    for table in tables:
        for column in table.columns:
            if not isinstance(column.type, sa.Integer):
                continue
            sequence = target.execute(sa.text("SELECT pg_get_serial_sequence(:t, :c)"),
                                      {"t": f'"{table.name}"', "c": column.name}).scalar()
            if sequence is None:
                continue
            target.execute(sa.text(
                f'SELECT setval(:s, GREATEST(m, COALESCE(pg_sequence_last_value(:s), 0))) '
                f'FROM (SELECT max("{column.name}") AS m FROM "{table.name}") AS t '
                "WHERE m IS NOT NULL"), {"s": sequence})


def _reflect(connection: Connection) -> sa.MetaData:
    metadata = sa.MetaData()
    metadata.reflect(connection)
    return metadata


def _migrate_store(settings: Settings, store: _Store, dry_run: bool,
                   progress: Progress) -> StoreResult:
    result = StoreResult(store.name, redacted(store.source), redacted(store.target))
    path = sqlite_file(store.source)
    if path is None:
        raise MigrationError(f"{store.name}: the embedded store {redacted(store.source)} is "
                             "not a SQLite file; only an embedded home can be migrated")
    if not is_postgres(store.target):
        raise MigrationError(f"{store.name}: the production store {redacted(store.target)} "
                             "is not PostgreSQL; check the production profile's settings")
    if not path.is_file():
        result.notes.append(f"no {path.name} in the home: nothing to move")
        return result
    source_engine = sa.create_engine(store.source)  # read only: SELECTs alone
    password = connect_args(settings, store.target)
    target_engine = sa.create_engine(store.target, connect_args=password)
    try:
        with source_engine.connect() as source:
            origin = _reflect(source)
            if not dry_run:
                try:
                    store.prepare(target_engine, store.target, password)
                except MigrationError:
                    raise
                except Exception as exc:  # sqlalchemy's, alembic's, the tool's own
                    raise MigrationError(
                        f"{store.name}: cannot create the schema in {redacted(store.target)} "
                        f"({exc.__class__.__name__}: {str(exc).splitlines()[0]}); check "
                        "that the production PostgreSQL runs ('SUTAZAI_PROFILE=production "
                        "make up') and its password secret postgres/password") from None
            with _TargetConnection(target_engine, store) as target:
                _check_target(store, target)
                goals = _reflect(target)
                tables = [t for t in origin.sorted_tables
                          if t.name != ALEMBIC_TABLE and not t.name.startswith(ALEMBIC_COPY)]
                unknown = [t.name for t in tables if t.name not in goals.tables]
                if unknown and goals.tables:
                    raise MigrationError(
                        f"{store.name}: the target has no table {unknown[0]!r}; the schemas "
                        "differ although their revisions match. Nothing was copied")
                totals = {t.name: source.execute(
                    sa.select(sa.func.count()).select_from(t)).scalar_one() for t in tables}
                task = progress.task(f"{store.name}: {path.name}", total=sum(totals.values()))
                for table in tables:
                    count = TableCount(table.name, rows=totals[table.name])
                    result.tables.append(count)
                    _copy_table(store, source, target, table, goals.tables.get(table.name),
                                count, result.notes, task.advance)
                task.close()
                if dry_run:
                    target.rollback()
                else:
                    _reset_sequences(target, [goals.tables[t.name] for t in tables])
                    target.commit()
                    if result.copied:
                        # Without statistics PostgreSQL's planner guesses: MLflow's registry
                        # search took 1.5 s instead of 37 ms on 1,000 freshly copied versions
                        # until autovacuum analysed them (benchmarks/production_vs_embedded.py)
                        target.execute(sa.text("ANALYZE"))
                        target.commit()
    finally:
        source_engine.dispose()
        target_engine.dispose()
    return result


class _TargetConnection:
    """A target connection, with an unreachable server said in one line."""

    def __init__(self, engine: Engine, store: _Store) -> None:
        self.engine, self.store = engine, store
        self.connection: Connection | None = None

    def __enter__(self) -> Connection:
        try:
            self.connection = self.engine.connect()
        except sa.exc.DBAPIError as exc:
            raise MigrationError(
                f"{self.store.name}: cannot connect to {redacted(self.store.target)} "
                f"({str(exc.orig).splitlines()[0]}); start the production services "
                "('SUTAZAI_PROFILE=production make up') and check the secret "
                "postgres/password") from None
        return self.connection

    def __exit__(self, *exc: object) -> None:
        if self.connection is not None:
            self.connection.close()


def migrate(embedded: Settings, production: Settings, *, dry_run: bool = False,
            progress: Progress = NULL_PROGRESS) -> MigrationReport:
    """Copy ``embedded``'s SQLite stores into ``production``'s PostgreSQL databases.

    Idempotent: a second run copies nothing. ``dry_run`` counts what would be copied and
    checks for conflicts without writing (a target without a schema yet counts every row).
    """
    from sutazai.security.audit import audit

    if not production.production:
        raise MigrationError("the target settings are not the production profile; set "
                             "SUTAZAI_PROFILE=production for the target")
    started = time.perf_counter()
    report = MigrationReport(dry_run, [])
    found = stores(embedded, production)
    try:
        revisions = [_check_source(store) for store in found]
        for store, revision in zip(found, revisions, strict=True):
            report.stores.append(_migrate_store(production, store, dry_run, progress))
            report.stores[-1].revision = revision
    except MigrationError as exc:
        if not dry_run:
            audit(embedded, "migrate.production", str(embedded.home), result="error",
                  details={"error": str(exc), "done": [s.store for s in report.stores]})
        raise
    report.seconds = time.perf_counter() - started
    if not dry_run:
        audit(embedded, "migrate.production", str(embedded.home), details={
            s.store: {"target": s.target, "copied": s.copied, "present": s.present}
            for s in report.stores})
    return report

