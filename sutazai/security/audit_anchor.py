"""Where the audit log's chain is anchored, outside the log.

The hash chain of :mod:`sutazai.security.audit` proves that no record *inside* the log was edited,
deleted or moved, but a log cut at its end, or emptied, is still a valid (shorter) chain,
and the ``.head`` file that remembers the end sits in the same folder, where whoever cuts
the log can delete it too. So every append also publishes ``(count, hash)``, the number
of records and the hash of the last one, to an :class:`AnchorStore` kept somewhere else;
``sutazai audit verify`` compares the log with it and an append refuses to chain onto a
log that does not match it.

The store is the setting ``audit_anchor``: a file path, best on another volume or in a
folder the processes that write the log may append to but not rewrite (``chattr +a`` on
the file, or a bind mount of another user's folder). Unset, it is
``<home>/audit-anchor/audit.jsonl.anchor``, next to the log's folder rather than in it, so
that deleting or restoring the audit folder does not take the anchor with it.
Its protection is exactly as good as the attacker's inability to write there: someone
who can rewrite the log, its head *and* the anchor can still forge a shorter history
(the ``audit_sink`` copy in a log pipeline is what catches that).

A :class:`FileAnchor` is append-only JSON lines, one per published anchor, the last one
current: the history shows every count the log ever had, including what an admin
accepted after an investigation (``event: accept``). It is compacted to its last line
past :data:`COMPACT_BYTES`. One anchor belongs to one log.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ValidationError

from sutazai.errors import AuditError

COMPACT_BYTES = 4 << 20  # ~40k anchors; then the file keeps its last line only
Event = Literal["append", "adopt", "accept"]


class Anchor(BaseModel):
    """The log had ``count`` records, the last one hashing to ``hash`` (GENESIS for 0)."""

    count: int
    hash: str
    time: str = ""
    event: Event = "append"  # adopt: a log older than anchoring; accept: an admin's decision
    by: str | None = None  # who accepted

    @classmethod
    def now(cls, count: int, hash: str, event: Event = "append",
            by: str | None = None) -> Anchor:
        return cls(count=count, hash=hash, event=event, by=by,
                   time=datetime.now(UTC).isoformat(timespec="microseconds"))

    def line(self) -> bytes:
        return (self.model_dump_json(exclude_defaults=True) + "\n").encode()


class AnchorStore(Protocol):
    """Somewhere the audit log publishes its (count, last hash) after every append."""

    @property
    def location(self) -> str:
        """Where, in words an operator can act on (a path, a URL)."""
        ...

    def read(self) -> Anchor | None:
        """The latest anchor, None when nothing was ever anchored here; raises
        :class:`AuditError` when it cannot be read or is damaged."""
        ...

    def publish(self, anchor: Anchor) -> None:
        """Record ``anchor`` as the latest; raises :class:`AuditError` when it cannot.
        The caller holds the log's lock and keeps counts increasing (but for an accept)."""
        ...


def last_line(path: Path) -> bytes:
    """The file's last line, read backwards from the end (the file may be large)."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        if end == 0:
            return b""
        block, data = 4096, b""
        position = end
        while position > 0:
            step = min(block, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
            if data.rstrip(b"\n").count(b"\n") >= 1:
                break
        return data.rstrip(b"\n").rsplit(b"\n", 1)[-1]


def default_anchor_path(log: Path) -> Path:
    """``<folder>-anchor/<log name>.anchor`` next to the log's folder (so
    ``<home>/audit-anchor/audit.jsonl.anchor``); beside the log for a log at the root."""
    log = Path(os.path.abspath(log))
    folder = log.parent
    if folder.name:
        return folder.with_name(folder.name + "-anchor") / (log.name + ".anchor")
    return log.with_name(log.name + ".anchor")


class FileAnchor:
    """An anchor kept as append-only JSON lines in a file (see the module docstring)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()

    @property
    def location(self) -> str:
        return str(self.path)

    def read(self) -> Anchor | None:
        try:
            line = last_line(self.path)
        except FileNotFoundError:
            return None
        except IsADirectoryError as exc:
            raise AuditError(f"the audit anchor {self.path} is a folder: set audit_anchor to "
                             "a file path") from exc
        except OSError as exc:
            raise AuditError(f"cannot read the audit anchor {self.path} "
                             f"({exc.strerror or exc}): fix its volume or permissions") from exc
        if not line:
            raise AuditError(f"the audit anchor {self.path} is empty: it was emptied (or a "
                             "crash hit its very first write); run 'sutazai audit verify' to "
                             "investigate")
        try:
            return Anchor.model_validate_json(line)
        except ValidationError as exc:
            raise AuditError(f"the audit anchor {self.path} is damaged (its last line is not "
                             "an anchor): keep a copy for the investigation, then an admin "
                             "runs 'sutazai audit accept --reason ...'") from exc

    def publish(self, anchor: Anchor) -> None:
        line = anchor.line()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)  # one small O_APPEND write: never interleaved
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
        except OSError as exc:
            raise AuditError(f"cannot write the audit anchor {self.path} "
                             f"({exc.strerror or exc}): fix its volume or permissions") from exc
        if size > COMPACT_BYTES:
            self._compact(line)

    def _compact(self, line: bytes) -> None:
        """Keep the last line only. Best effort: a file made append-only (chattr +a), or a
        folder the writer may not create files in, just keeps growing."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
