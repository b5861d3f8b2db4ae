"""An append-only, hash-chained audit log: who did what to which model, secret or service.

Each record is one JSON line in ``<home>/audit/audit.jsonl``. Its ``hash`` is the sha256 of
the canonical JSON (sorted keys, no spaces) of every other field, ``prev_hash`` included,
so each record seals the one before it: editing, deleting, inserting or reordering any
line breaks the chain at that line, and ``verify`` names it. Cutting lines off the *end*
leaves a valid shorter chain, so the last ``seq`` and ``hash`` are also kept in
``audit.head``; ``verify`` checks the chain ends there. Someone who can rewrite both
files can forge a consistent history: ship the records to a store they cannot write
(``sink``: stdout for Loki/ELK collectors, or a second file) for that guarantee.

Several processes may append at once (the CLI, the gateway, nightly jobs): every append
holds an exclusive file lock, reads the last record, writes one line with one
``write`` and ``fsync``s it before the lock is released, so the chain never forks and an
acknowledged record survives a crash.

Failure policy: :func:`audit` and :meth:`AuditLog.record` raise :class:`AuditError` when
the record cannot be written; they never swallow it. A state-changing action (a model
deleted, a champion promoted, a secret read) whose audit record is lost would be an
unaccountable change, which compliance regimes (SOC 2 CC7, ISO 27001 A.8.15) treat as
worse than a refused action. Callers record *before* they act when they can (so a broken
log stops the action) or right after with the outcome; either way the error reaches the
operator, who fixes the disk or permissions rather than losing history silently.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import sys
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from filelock import FileLock, Timeout
from pydantic import BaseModel, SecretBytes, SecretStr

from sutazai.errors import SutazAIError

if TYPE_CHECKING:
    from sutazai.config import Settings

GENESIS = "0" * 64
Result = Literal["ok", "denied", "absent", "error"]  # absent: a secret looked up, not there
LOCK_TIMEOUT_S = 30.0


class AuditError(SutazAIError):
    """The audit log cannot be written or read (move to sutazai.errors later)."""


class AuditRecord(BaseModel):
    seq: int
    time: str
    actor: str
    action: str
    target: str
    before: Any = None
    after: Any = None
    result: Result = "ok"
    details: dict[str, Any] = {}
    prev_hash: str
    hash: str

    def line(self) -> str:
        return canonical(self.model_dump()) + "\n"


class VerifyResult(BaseModel):
    ok: bool
    records: int
    last_hash: str = GENESIS
    bad_line: int | None = None
    reason: str | None = None

    def summary(self) -> str:
        if self.ok:
            return f"audit log intact: {self.records} record(s), last hash {self.last_hash[:16]}"
        return f"audit log broken at line {self.bad_line}: {self.reason}"


def _redacted(value: Any) -> Any:
    """JSON for values json does not know; secrets become their mask, never their value."""
    if isinstance(value, SecretStr | SecretBytes):
        return str(value)  # '**********'
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path | datetime):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
    raise TypeError(f"cannot write {type(value).__name__} to the audit log")


def canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=_redacted)


def record_hash(fields: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of the record without ``hash`` (``prev_hash`` in it)."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


def default_actor() -> str:
    """Who is acting when the caller does not say: ``SUTAZAI_ACTOR`` (set by the gateway or
    a pipeline to an API key id or role), else the operating-system user."""
    explicit = os.environ.get("SUTAZAI_ACTOR")
    if explicit:
        return explicit
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (some containers)
        return f"uid:{os.getuid()}"


def _last_line(path: Path) -> bytes:
    """The file's last line, read backwards from the end (the log may be large)."""
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


class AuditLog:
    """One audit log file (and its ``.head`` and ``.lock`` companions).

    ``sink``: ``None`` (default), ``"stdout"``, ``"stderr"`` or a file path; each record
    is also written there as one JSON line for a log pipeline (Loki, ELK). A sink that
    fails raises too: the pipeline copy is what makes tampering evident.
    """

    def __init__(self, path: Path, sink: str | None = None) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise AuditError(f"{self.path} is a folder: give the audit log's file, e.g. "
                             f"{self.path / 'audit.jsonl'}")
        self.head_path = self.path.with_name(self.path.name + ".head")
        self.lock = FileLock(str(self.path.with_name(self.path.name + ".lock")),
                             timeout=LOCK_TIMEOUT_S)
        self.sink = sink

    def record(
        self,
        action: str,
        target: str,
        *,
        actor: str | None = None,
        before: Any = None,
        after: Any = None,
        result: Result = "ok",
        details: dict[str, Any] | None = None,
    ) -> AuditRecord:
        """Append one record and return it; raises :class:`AuditError` when it cannot."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.lock:
                prev_seq, prev_hash = self._last()
                fields: dict[str, Any] = {
                    "seq": prev_seq + 1,
                    "time": datetime.now(UTC).isoformat(timespec="microseconds"),
                    "actor": actor or default_actor(),
                    "action": action,
                    "target": target,
                    "before": json.loads(canonical(before)),
                    "after": json.loads(canonical(after)),
                    "result": result,
                    "details": json.loads(canonical(details or {})),
                    "prev_hash": prev_hash,
                }
                fields["hash"] = record_hash(fields)
                record = AuditRecord(**fields)
                line = record.line().encode()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self._write_head(record)
        except Timeout as exc:
            raise AuditError(
                f"audit log {self.path} stayed locked for {LOCK_TIMEOUT_S:.0f} s: a process "
                f"holding {self.lock.lock_file} is stuck; stop it and retry"
            ) from exc
        except OSError as exc:
            raise AuditError(
                f"cannot write the audit log {self.path} ({exc.strerror or exc}): fix the "
                "folder's space or permissions; the action was not recorded"
            ) from exc
        self._to_sink(record)
        return record

    def _last(self) -> tuple[int, str]:
        if not self.path.exists():
            return 0, GENESIS
        line = _last_line(self.path)
        if not line:
            return 0, GENESIS
        try:
            data = json.loads(line)
            return int(data["seq"]), str(data["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(
                f"the last line of the audit log {self.path} is damaged, so no record can be "
                "chained to it: run 'sutazai audit verify', keep a copy of the file for the "
                "investigation, then move it aside to start a new log"
            ) from exc

    def _write_head(self, record: AuditRecord) -> None:
        """Replace the head atomically. Not fsynced (that would double the cost of a
        record): after a crash it may lag the log, which ``verify`` accepts."""
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps({"seq": record.seq, "hash": record.hash}))
        os.replace(tmp, self.head_path)

    def _to_sink(self, record: AuditRecord) -> None:
        if not self.sink:
            return
        line = record.line()
        if self.sink in ("stdout", "stderr"):
            stream = sys.stdout if self.sink == "stdout" else sys.stderr
            stream.write(line)
            stream.flush()
            return
        try:
            with open(self.sink, "a", encoding="utf-8") as handle:
                handle.write(line)
        except OSError as exc:
            raise AuditError(
                f"record {record.seq} is in {self.path} but could not be copied to the audit "
                f"sink {self.sink} ({exc.strerror or exc}): fix the sink"
            ) from exc

    def records(self) -> list[AuditRecord]:
        """Every record, oldest first (for reports; ``verify`` checks them)."""
        if not self.path.exists():
            return []
        with self.path.open(encoding="utf-8") as handle:
            return [AuditRecord.model_validate_json(line) for line in handle if line.strip()]

    def tail(self, n: int = 20) -> list[AuditRecord]:
        """The last ``n`` records, oldest first."""
        if not self.path.exists() or n <= 0:
            return []
        with self.path.open(encoding="utf-8") as handle:
            lines = deque((line for line in handle if line.strip()), maxlen=n)
        try:
            return [AuditRecord.model_validate_json(line) for line in lines]
        except ValueError as exc:
            raise AuditError(f"the audit log {self.path} has a damaged line: run "
                             "'sutazai audit verify' to find it") from exc

    def verify(self) -> VerifyResult:
        """Walk the chain; the first line whose seq, link or hash is wrong is reported."""
        head = self._head()
        prev_hash, count = GENESIS, 0
        with contextlib.ExitStack() as stack:
            handle = (stack.enter_context(self.path.open("rb")) if self.path.exists()
                      else iter(()))  # a deleted log with a head left is caught below
            for number, raw in enumerate(handle, start=1):
                reason, record = self._check(raw, number, prev_hash)
                if record is None:
                    return VerifyResult(ok=False, records=count, last_hash=prev_hash,
                                        bad_line=number, reason=reason)
                if head is not None and record.seq == head["seq"] and record.hash != head["hash"]:
                    return VerifyResult(
                        ok=False, records=count, last_hash=prev_hash, bad_line=number,
                        reason=f"hash differs from the one {self.head_path.name} recorded for "
                               "this seq: the log was rewritten")
                prev_hash, count = record.hash, count + 1
        # The head is written just after the line, so a crash can leave it one record
        # behind; a head *ahead* of the log means lines were cut off the end.
        if head is not None and head["seq"] > count:
            return VerifyResult(
                ok=False, records=count, last_hash=prev_hash, bad_line=count + 1,
                reason=f"the log ends at seq {count} but {self.head_path.name} records seq "
                       f"{head['seq']}: records were cut off the end")
        return VerifyResult(ok=True, records=count, last_hash=prev_hash)

    @staticmethod
    def _check(raw: bytes, number: int, prev_hash: str) -> tuple[str, AuditRecord | None]:
        """(why line ``number`` is bad, None), or ("", its record) when it chains on."""
        if not raw.endswith(b"\n"):
            return ("the line is cut short (no newline): a write was interrupted or the "
                    "file was edited"), None
        try:
            data = json.loads(raw)
            record = AuditRecord.model_validate(data)
        except ValueError as exc:
            return f"not a valid audit record ({str(exc).splitlines()[0]})", None
        if set(data) != set(AuditRecord.model_fields):
            return "the record's fields were changed", None
        if record.seq != number:
            return (f"seq is {record.seq}, expected {number}: a record was deleted, "
                    "inserted or moved"), None
        if record.prev_hash != prev_hash:
            return ("prev_hash does not match the previous record: a record was deleted, "
                    "inserted or moved"), None
        if record_hash(data) != record.hash:
            return "hash does not match the record's content: the record was edited", None
        return "", record

    def _head(self) -> dict[str, Any] | None:
        if not self.head_path.exists():
            return None
        try:
            data = json.loads(self.head_path.read_text())
            return {"seq": int(data["seq"]), "hash": str(data["hash"])}
        except (ValueError, KeyError, TypeError):
            return {"seq": -1, "hash": ""}


def audit_path(settings: Settings) -> Path:
    """``settings.audit_path`` once Settings has it, else ``<home>/audit/audit.jsonl``."""
    explicit = getattr(settings, "audit_path", None)
    return Path(explicit) if explicit else settings.home / "audit" / "audit.jsonl"


def open_audit_log(settings: Settings) -> AuditLog:
    return AuditLog(audit_path(settings), sink=settings.audit_sink)


def audit(
    settings: Settings,
    action: str,
    target: str,
    *,
    actor: str | None = None,
    before: Any = None,
    after: Any = None,
    result: Result = "ok",
    details: dict[str, Any] | None = None,
) -> AuditRecord:
    """Record one action in the settings' audit log. Raises :class:`AuditError` on failure:
    see the module docstring for why a lost audit record must not pass silently."""
    return open_audit_log(settings).record(action, target, actor=actor, before=before,
                                           after=after, result=result, details=details)
