"""Remembering which stored files were hashed and found intact, so checks stay cheap.

A pull of an unchanged model and an engine start both check that the bytes they rely on
are the right ones. Hashing a multi-GB model every time would make both slow, so a file
that was hashed and matched is recorded with what changes whenever it is written: its
device, inode, size, modification time and change time (``st_ctime_ns`` cannot be set
back by ``touch``, and replacing a file gives it a new inode). While all of these stay
the same the file is taken as verified; when any differs it is hashed again.

This catches every change made through the filesystem (an edit, a truncation, a copy
over it). It cannot see bytes that rot on the disk underneath an unchanged inode: that
is what ``sutazai models verify`` is for. It always re-hashes and drops the record of a
file it finds damaged, so the next pull or engine start hashes (and repairs) it too.

The records live in one small SQLite database in the repository (``verified.db``). Any
failure to read or write it (a read-only repository, a locked or damaged database) only
costs a re-hash: a file is never taken as verified without a record of it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """CREATE TABLE IF NOT EXISTS verified (
    path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER,
    ctime_ns INTEGER, digest TEXT)"""


def _identity(stat: os.stat_result) -> tuple[int, int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


class VerifiedCache:
    """Files whose sha256 matched, keyed by their path and stat identity (see module)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if not create and not self.path.exists():
            return None
        connection = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        if create:
            connection.execute(_SCHEMA)
        return connection

    @staticmethod
    def _key(path: Path) -> str:
        return os.path.abspath(path)

    def verified(self, path: Path, digest: str) -> bool:
        """True when ``path`` was recorded as holding ``digest`` and is unchanged since."""
        try:
            stat = path.stat()
        except OSError:
            return False
        try:
            connection = self._connect(create=False)
            if connection is None:
                return False
            with closing(connection):
                row = connection.execute(
                    "SELECT dev, ino, size, mtime_ns, ctime_ns, digest FROM verified "
                    "WHERE path = ?", (self._key(path),)).fetchone()
        except sqlite3.Error as exc:
            log.debug("verified-files cache %s unreadable (%s): hashing instead", self.path, exc)
            return False
        return row is not None and tuple(row[:5]) == _identity(stat) and row[5] == digest

    def record(self, path: Path, digest: str, before: os.stat_result | None = None) -> None:
        """Remember that ``path`` holds ``digest``. Pass the stat taken *before* hashing:
        when the file changed since, nothing is recorded."""
        try:
            stat = path.stat()
        except OSError:
            return
        if before is not None and _identity(before) != _identity(stat):
            return
        try:
            connection = self._connect(create=True)
            assert connection is not None
            with closing(connection):
                connection.execute(
                    "INSERT OR REPLACE INTO verified VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (self._key(path), *_identity(stat), digest))
        except sqlite3.Error as exc:
            log.debug("verified-files cache %s not written (%s)", self.path, exc)

    def forget(self, paths: Iterable[Path]) -> None:
        """Drop the records of ``paths`` (damaged, replaced or deleted files)."""
        keys = [(self._key(p),) for p in paths]
        if not keys:
            return
        try:
            connection = self._connect(create=False)
            if connection is None:
                return
            with closing(connection):
                connection.executemany("DELETE FROM verified WHERE path = ?", keys)
        except sqlite3.Error as exc:
            log.debug("verified-files cache %s not updated (%s)", self.path, exc)

    def prune(self) -> int:
        """Drop records of files that no longer exist; returns how many."""
        try:
            connection = self._connect(create=False)
            if connection is None:
                return 0
            with closing(connection):
                gone = [(key,) for (key,) in connection.execute("SELECT path FROM verified")
                        if not os.path.exists(key)]
                connection.executemany("DELETE FROM verified WHERE path = ?", gone)
                return len(gone)
        except sqlite3.Error as exc:
            log.debug("verified-files cache %s not pruned (%s)", self.path, exc)
            return 0
