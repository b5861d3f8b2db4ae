"""An append-only, hash-chained audit log: who did what to which model, secret or service.

Each record is one JSON line in ``<home>/audit/audit.jsonl``. Its ``hash`` is the sha256 of
the canonical JSON (sorted keys, no spaces) of every other field, ``prev_hash`` included,
so each record seals the one before it: editing, deleting, inserting or reordering any
line breaks the chain at that line, and ``verify`` names it.

Cutting lines off the *end*, or emptying the file, leaves a valid shorter chain. So every
append also publishes the record count and last hash to an anchor kept outside the
log's folder (:mod:`sutazai.security.audit_anchor`, setting ``audit_anchor``), and, as before, to
``audit.jsonl.head`` beside the log. ``verify`` fails when the log is shorter than its
anchor, differs from it, or lost both its anchor and head; an append refuses to chain onto
a log whose end it cannot trust (:class:`AuditChainError`) until an admin has
investigated and run ``sutazai audit accept --reason ...``, which is itself a record. A
log older than anchoring (a head without an anchor) is adopted by its next append, after
a full check, and says so in a record. Someone who can rewrite the log, its head *and*
the anchor can still forge a consistent history: keep the anchor where the writers cannot
rewrite it, and ship the records to a store they cannot write (``sink``: stdout for
Loki/ELK collectors, or a second file).

Several processes may append at once (the CLI, the gateway, nightly jobs): every append
holds an exclusive file lock, checks the log's last record against the anchor (the last
line is re-read only when the file's size, inode or mtime changed since this process last
wrote it; the whole chain is walked only when they disagree), writes one line with one
``write`` and ``fsync``s it before the lock is released, so the chain never forks and an
acknowledged record survives a crash. The anchor and head follow the line without an
fsync of their own: after a crash they may lag the log by a record, which ``verify``
accepts and the next append catches up after walking the chain.

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
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from filelock import FileLock, Timeout
from pydantic import BaseModel, SecretBytes, SecretStr

from sutazai.errors import AuditChainError, AuditError
from sutazai.security.audit_anchor import (
    Anchor,
    AnchorStore,
    FileAnchor,
    default_anchor_path,
    last_line,
)

if TYPE_CHECKING:
    from sutazai.config import Settings


GENESIS = "0" * 64
Result = Literal["ok", "denied", "absent", "error"]  # absent: a secret looked up, not there
Problem = Literal["chain", "anchor", "head"]  # chain: the lines themselves; else their end
LOCK_TIMEOUT_S = 30.0
ACCEPT = ("investigate ('sutazai audit tail', the audit sink, a backup), then an admin runs "
          "'sutazai audit accept --reason ...' to anchor the log as it is")
MOVE_ASIDE = ("keep a copy of the file for the investigation, move it aside, then an admin "
              "runs 'sutazai audit accept --reason ...' to start a new log")

# Per process: the last line of each log as (dev, inode, size, mtime_ns) -> (seq, hash),
# so that an append after this process's own one need not read and hash it again.
_TAILS: dict[str, tuple[tuple[int, int, int, int], int, str]] = {}


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
    problem: Problem | None = None
    anchor: str | None = None  # where the anchor is kept
    anchored: int | None = None  # the record count it holds; None: nothing anchored
    note: str | None = None

    def summary(self) -> str:
        if self.ok:
            text = f"audit log intact: {self.records} record(s), last hash {self.last_hash[:16]}"
            if self.anchored is not None and self.anchor:
                text += f", matches its anchor {self.anchor}"
            return text + (f" ({self.note})" if self.note else "")
        if self.bad_line is None:
            return f"audit log not trustworthy: {self.reason}"
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


class AuditLog:
    """One audit log file (with its ``.head`` and ``.lock`` companions) and its anchor.

    ``sink``: ``None`` (default), ``"stdout"``, ``"stderr"`` or a file path; each record
    is also written there as one JSON line for a log pipeline (Loki, ELK). A sink that
    fails raises too: the pipeline copy is what makes tampering evident.
    ``anchor``: an :class:`~sutazai.security.audit_anchor.AnchorStore` or a file path; default
    :func:`~sutazai.security.audit_anchor.default_anchor_path` (next to the log's folder).
    """

    def __init__(self, path: Path, sink: str | None = None,
                 anchor: AnchorStore | Path | str | None = None) -> None:
        self.path = Path(path)
        try:
            is_dir = self.path.is_dir()
        except OSError as exc:  # a name too long, a loop of links
            raise AuditError(f"{self.path} cannot be an audit log ({exc.strerror or exc}): give "
                             "another path") from exc
        if is_dir:
            raise AuditError(f"{self.path} is a folder: give the audit log's file, e.g. "
                             f"{self.path / 'audit.jsonl'}")
        self.head_path = self.path.with_name(self.path.name + ".head")
        self.lock = FileLock(str(self.path.with_name(self.path.name + ".lock")),
                             timeout=LOCK_TIMEOUT_S)
        self.sink = sink
        if anchor is None:
            anchor = default_anchor_path(self.path)
        self.anchor: AnchorStore = (FileAnchor(anchor) if isinstance(anchor, str | Path)
                                    else anchor)

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
        """Append one record and return it; raises :class:`AuditError` when it cannot, and
        :class:`AuditChainError` when the log's end does not match its anchor."""
        written: list[AuditRecord] = []
        with self._locked():
            seq, prev_hash = self._trusted_tail(actor, written)
            written.append(self._append(seq, prev_hash, actor=actor, action=action,
                                        target=target, before=before, after=after,
                                        result=result, details=details))
        for record in written:
            self._to_sink(record)
        return written[-1]

    def accept(self, reason: str, *, actor: str | None = None) -> AuditRecord:
        """After an investigation: anchor the log as it is now, with a record of what was
        accepted (the anchor's former count and hash, the problem, ``reason``).

        Accepts an end that disagrees with the anchor or head (records cut off, the log
        emptied, the anchor lost); refuses a chain broken inside, which must be moved aside
        first (then this starts a new log).
        """
        if not reason.strip():
            raise AuditError("say what the investigation found: --reason '...'")
        written: list[AuditRecord] = []
        with self._locked():
            unreadable = None
            try:
                before = self.anchor.read()
            except AuditError as exc:
                before, unreadable = None, str(exc)
            result = self._verify(before)
            if result.problem == "chain":
                raise AuditChainError(f"cannot accept the audit log {self.path} as it is, it is "
                                      f"broken at line {result.bad_line}: {result.reason}")
            who = actor or default_actor()
            self.anchor.publish(Anchor.now(result.records, result.last_hash, "accept", by=who))
            details = {
                "reason": reason, "anchor": self.anchor.location, "records": result.records,
                "last_hash": result.last_hash,
                "anchored_before": (before.model_dump(exclude_defaults=True)
                                    if before is not None else unreadable),
                "problem": result.reason,
            }
            written.append(self._append(result.records, result.last_hash, actor=who,
                                        action="audit.accept", target=str(self.path),
                                        details=details))
        for record in written:
            self._to_sink(record)
        return written[-1]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.lock:
                yield
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

    def _trusted_tail(self, actor: str | None, written: list[AuditRecord]) -> tuple[int, str]:
        """(seq, hash) of the last record, once it matches the anchor (under the lock).

        Cheap when the last record is the anchored one; otherwise the whole chain is
        walked: a log older than anchoring is adopted (with a record saying so), an anchor
        a crash left behind is caught up, anything else is refused.
        """
        anchor = self.anchor.read()
        seq, last_hash = self._tail()
        if anchor is not None and anchor.count == seq and anchor.hash == last_hash:
            return seq, last_hash
        result = self._verify(anchor)
        if not result.ok:
            raise AuditChainError(f"refusing to add to the audit log {self.path}: "
                                  f"{result.summary().removeprefix('audit log ')}")
        if anchor is None and result.records == 0:
            return 0, GENESIS  # a new log: its first record anchors it
        if anchor is None:
            self.anchor.publish(Anchor.now(result.records, result.last_hash, "adopt"))
            adopted = self._append(
                result.records, result.last_hash, actor=actor, action="audit.anchor.adopt",
                target=self.anchor.location,
                details={"records": result.records, "last_hash": result.last_hash,
                         "why": "the log predates anchoring; its chain and head verified"})
            written.append(adopted)
            return adopted.seq, adopted.hash
        self.anchor.publish(Anchor.now(result.records, result.last_hash))  # it lagged the log
        return result.records, result.last_hash

    def _tail(self) -> tuple[int, str]:
        """(seq, hash) of the last line, which must be a record whose hash is right."""
        key = os.path.abspath(self.path)
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return 0, GENESIS
        cached = _TAILS.get(key)
        if cached is not None and cached[0] == _stat_key(stat):
            return cached[1], cached[2]
        line = last_line(self.path)
        if not line:
            return 0, GENESIS
        try:
            data = json.loads(line)
            seq, last_hash = int(data["seq"]), str(data["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(
                f"the last line of the audit log {self.path} is damaged, so no record can be "
                "chained to it: run 'sutazai audit verify', keep a copy of the file for the "
                "investigation, then move it aside to start a new log"
            ) from exc
        if record_hash(data) != last_hash:
            raise AuditChainError(
                f"refusing to add to the audit log {self.path}: its last record (seq {seq}) "
                "was edited (its hash does not match its content); run 'sutazai audit "
                f"verify', then {MOVE_ASIDE}")
        _TAILS[key] = (_stat_key(stat), seq, last_hash)
        return seq, last_hash

    def _append(self, prev_seq: int, prev_hash: str, *, actor: str | None, action: str,
                target: str, before: Any = None, after: Any = None, result: Result = "ok",
                details: dict[str, Any] | None = None) -> AuditRecord:
        """Write one record after (prev_seq, prev_hash), then anchor it (under the lock)."""
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
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, record.line().encode())
            os.fsync(fd)
            stat = os.fstat(fd)
        finally:
            os.close(fd)
        _TAILS[os.path.abspath(self.path)] = (_stat_key(stat), record.seq, record.hash)
        try:
            self.anchor.publish(Anchor.now(record.seq, record.hash))
        except AuditError as exc:
            raise AuditError(f"record {record.seq} is in {self.path}, but {exc}") from exc
        self._write_head(record)
        return record

    def _write_head(self, record: AuditRecord) -> None:
        """Replace the head atomically. Not fsynced (that would double the cost of a
        record): after a crash it may lag the log, which ``verify`` accepts."""
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps({"seq": record.seq, "hash": record.hash,
                                     "anchor": self.anchor.location}))
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
        """Walk the chain and hold its end against the anchor and head; the first line whose
        seq, link or hash is wrong, or the first record missing from the end, is reported."""
        try:
            anchor = self.anchor.read()  # before the log: an append in between is no alarm
        except AuditError as exc:
            return VerifyResult(ok=False, records=0, reason=str(exc), problem="anchor",
                                anchor=self.anchor.location)
        try:
            return self._verify(anchor)
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {self.path} ({exc.strerror or exc}): "
                             "fix its permissions, then verify again") from exc

    def _verify(self, anchor: Anchor | None) -> VerifyResult:
        head = self._head()
        where = self.anchor.location
        anchored = anchor.count if anchor is not None else None
        prev_hash, count = GENESIS, 0

        def broken(line: int | None, reason: str, problem: Problem) -> VerifyResult:
            return VerifyResult(ok=False, records=count, last_hash=prev_hash, bad_line=line,
                                reason=reason, problem=problem, anchor=where,
                                anchored=anchored)

        with contextlib.ExitStack() as stack:
            handle = (stack.enter_context(self.path.open("rb")) if self.path.exists()
                      else iter(()))  # a deleted log is caught by its anchor or head below
            for number, raw in enumerate(handle, start=1):
                reason, record = self._check(raw, number, prev_hash)
                if record is None:
                    return broken(number, f"{reason}; {MOVE_ASIDE}", "chain")
                if head is not None and record.seq == head["seq"] and record.hash != head["hash"]:
                    return broken(number, f"hash differs from the one {self.head_path.name} "
                                  f"recorded for this seq: the log was rewritten; {MOVE_ASIDE}",
                                  "chain")
                if anchor is not None and record.seq == anchor.count and record.hash != anchor.hash:
                    return broken(number, f"hash differs from the one the anchor at {where} "
                                  f"recorded for this seq: the log was rewritten; {MOVE_ASIDE}",
                                  "chain")
                prev_hash, count = record.hash, count + 1
        if anchor is not None and anchor.count > count:
            cut = (f"record {count + 1} was" if anchor.count == count + 1
                   else f"records {count + 1}-{anchor.count} were")
            return broken(count + 1, f"the log has {count} record(s) but the anchor at {where} "
                          f"recorded {anchor.count} (last hash {anchor.hash[:16]}, "
                          f"{anchor.time[:19] or 'no time'}): {cut} cut off the end; {ACCEPT}",
                          "anchor")
        if anchor is None and count > 0:
            if head is None or head["seq"] < 0:
                return broken(None, f"the log has {count} record(s) but there is no anchor at "
                              f"{where} and no readable {self.head_path.name}: the anchor was "
                              "deleted or moved (check the audit_anchor setting), or the log "
                              f"predates anchoring and lost its head; {ACCEPT}", "anchor")
            if head["anchor"] is not None:
                return broken(None, f"the log has {count} record(s) but its anchor is missing "
                              f"at {where}, and {self.head_path.name} says it was anchored at "
                              f"{head['anchor']}: the anchor was deleted or moved (check the "
                              f"audit_anchor setting); {ACCEPT}", "anchor")
        # The head is written just after the line, so a crash can leave it one record
        # behind; a head *ahead* of the log means lines were cut off the end.
        if head is not None and head["seq"] > count:
            return broken(count + 1, f"the log ends at seq {count} but {self.head_path.name} "
                          f"records seq {head['seq']}: records were cut off the end; {ACCEPT}",
                          "head")
        note = None
        if anchor is None and count > 0:
            note = (f"not anchored yet: the log predates anchoring; its next record anchors it "
                    f"at {where}")
        elif anchor is not None and anchor.count < count:
            note = (f"the anchor lags {count - anchor.count} record(s) behind (a crash between "
                    "the two writes?); the next record catches it up")
        return VerifyResult(ok=True, records=count, last_hash=prev_hash, anchor=where,
                            anchored=anchored, note=note)

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
        """The head file's seq, hash and anchor (None in heads older than anchoring);
        seq -1 when it is damaged."""
        if not self.head_path.exists():
            return None
        try:
            data = json.loads(self.head_path.read_text())
            anchor = data.get("anchor")
            return {"seq": int(data["seq"]), "hash": str(data["hash"]),
                    "anchor": str(anchor) if anchor is not None else None}
        except (ValueError, KeyError, TypeError, AttributeError):
            return {"seq": -1, "hash": "", "anchor": None}


def _stat_key(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def audit_path(settings: Settings) -> Path:
    """``settings.audit_path`` once Settings has it, else ``<home>/audit/audit.jsonl``."""
    explicit = getattr(settings, "audit_path", None)
    return Path(explicit) if explicit else settings.home / "audit" / "audit.jsonl"


def anchor_store(settings: Settings) -> AnchorStore:
    """The ``audit_anchor`` setting (a file path), else the default next to the log's
    folder (:func:`~sutazai.security.audit_anchor.default_anchor_path`)."""
    configured = getattr(settings, "audit_anchor", None)
    return FileAnchor(configured if configured else default_anchor_path(audit_path(settings)))


def open_audit_log(settings: Settings) -> AuditLog:
    return AuditLog(audit_path(settings), sink=settings.audit_sink,
                    anchor=anchor_store(settings))


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
