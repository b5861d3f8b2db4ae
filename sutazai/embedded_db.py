"""First use of an embedded SQLite database: one process at a time, and half-done work repaired.

Two commands started together in an empty home (``sutazai models pull`` twice) used to
create and migrate MLflow's database at the same moment. Alembic's migrations are neither
atomic on SQLite nor safe to run twice at once: one process failed with
``CircularDependencyError``, and a batch migration cut short left a copy table
(``_alembic_tmp_latest_metrics``) that broke every later command for good. Every embedded
store (MLflow, the learning store, NAS storage, the local Airflow) is therefore created and
migrated under one lock per folder, which for the defaults is the home, and a leftover of
an interrupted migration is cleaned up before the next one runs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from sutazai.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = ".setup.lock"
ALEMBIC_COPY = "_alembic_tmp_"
_LOCKS: dict[str, FileLock] = {}


def sqlite_file(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` URL; None for servers and in-memory databases."""
    if not url.startswith("sqlite:///") or url in ("sqlite:///", "sqlite:///:memory:"):
        return None
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0])


@contextlib.contextmanager
def first_use(folder: Path, what: str, timeout_s: float = 600.0) -> Iterator[None]:
    """Held while ``what`` is created or migrated in ``folder``; other processes wait."""
    folder.mkdir(parents=True, exist_ok=True)
    path = str((folder / LOCK_FILE).resolve())
    # one lock object per file, so a thread that holds it may take it again (re-entrant)
    lock = _LOCKS.setdefault(path, FileLock(path))
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        raise ConfigError(
            f"another SutazAI process has been setting up {what} in {folder} for over "
            f"{timeout_s:.0f}s; wait for it, or stop it (a hung process holds "
            f"{folder / LOCK_FILE})") from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def first_use_of(url: str, what: str) -> Iterator[None]:
    """:func:`first_use` for the folder of a SQLite URL; nothing to hold for a server."""
    path = sqlite_file(url)
    if path is None:
        yield
        return
    with first_use(path.parent, what):
        yield


def drop_alembic_leftovers(engine: Any, what: str) -> list[str]:
    """Drop the copy tables an interrupted Alembic batch migration left (call under
    :func:`first_use`, so no migration is running). A batch migration on SQLite copies a
    table to ``_alembic_tmp_<name>``, drops the original and renames the copy; cut short
    before the drop, the original is intact and the copy is garbage. Cut short between the
    drop and the rename, the copy holds the only data: that is not guessed at, it is
    explained."""
    import sqlalchemy

    tables = set(sqlalchemy.inspect(engine).get_table_names())
    copies = sorted(t for t in tables if t.startswith(ALEMBIC_COPY))
    orphaned = [t for t in copies if t.removeprefix(ALEMBIC_COPY) not in tables]
    if orphaned:
        raise ConfigError(
            f"{what} at {engine.url.database} was cut short in a migration: table "
            f"{orphaned[0].removeprefix(ALEMBIC_COPY)!r} exists only as the copy "
            f"{orphaned[0]!r}. Back the file up, then rename the copy back (sqlite3: ALTER "
            "TABLE ... RENAME TO ...) and run again, or move the file aside to start afresh")
    with engine.begin() as connection:
        for table in copies:
            log.warning("removing %s, left in %s by a migration that was cut short", table,
                        engine.url.database)
            connection.execute(sqlalchemy.text(f'DROP TABLE "{table}"'))
    return copies
