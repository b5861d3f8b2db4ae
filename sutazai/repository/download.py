"""Resumable, verifying HTTP downloads into the repository's staging area.

Bytes are hashed while they arrive, so a download is verified the moment it ends and
can be renamed into the blob store without a second pass over the data. A download that
is interrupted (network error, SIGKILL) leaves ``tmp/downloads/<key>.part`` and a small
JSON record of the server's validators; the next attempt re-hashes what is there and
asks only for the rest with an HTTP ``Range`` request guarded by ``If-Range``, so a
changed file on the server restarts cleanly instead of producing a spliced one.

Space is checked before the body is written, when the server says how large it is, and a
write that still runs out of space (something else filled the disk meanwhile) deletes the
partial file and says so: "run it again" cannot help until space is freed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from urllib3.util import Retry

from sutazai.errors import IntegrityError, SourceError
from sutazai.progress import NULL_PROGRESS, Progress, ProgressTask
from sutazai.repository.fsutil import (
    disk_full,
    ensure_free_space,
    hash_stream,
    human_bytes,
    is_disk_full,
)

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass
class Downloaded:
    """A complete, verified download waiting in the staging area."""

    path: Path
    digest: str
    size: int
    transferred: int  # bytes that crossed the network in this attempt
    resumed_from: int  # bytes that were already on disk from an earlier attempt


class _RetriesAtDebug(logging.Filter):
    """urllib3 logs every retry as a WARNING ("Retrying (Retry(total=2, ...)) after
    connection broken by ..."): an unreachable host printed six of them before the one
    error that matters. Retries are routine; they are logged at DEBUG instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and str(record.msg).startswith("Retrying"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _quiet_retries() -> None:
    logger = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _RetriesAtDebug) for f in logger.filters):
        logger.addFilter(_RetriesAtDebug())


def make_pool(timeout_s: float) -> urllib3.PoolManager:
    _quiet_retries()
    retries = Retry(
        total=3, connect=3, read=2, backoff_factor=0.5, status_forcelist=(502, 503, 504),
        allowed_methods=frozenset({"GET", "HEAD"}), raise_on_status=False, redirect=5,
    )
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=min(timeout_s, 15.0), read=timeout_s), retries=retries
    )


def request(
    pool: urllib3.PoolManager,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> urllib3.BaseHTTPResponse:
    """One HTTP request, with network failures turned into a readable SourceError."""
    try:
        return pool.request(method, url, headers=headers or {}, **kwargs)
    except urllib3.exceptions.HTTPError as exc:
        raise unreachable(url, exc) from None


def unreachable(url: str, exc: Exception) -> SourceError:
    """The error for a request that failed without an answer (after its retries)."""
    reason = getattr(exc, "reason", None) or exc  # MaxRetryError wraps the last failure
    return SourceError(f"cannot reach {url}: {reason.__class__.__name__}: {reason}; check "
                       "the URL, the network, or the mirror")


class HttpDownloader:
    """Downloads URLs into ``staging_dir``, resuming and verifying as it goes."""

    def __init__(
        self,
        staging_dir: Path,
        *,
        timeout_s: float = 60.0,
        chunk_bytes: int = 4 * 1024 * 1024,
        progress: Progress = NULL_PROGRESS,
        pool: urllib3.PoolManager | None = None,
        space_factor: int = 1,
    ) -> None:
        """``space_factor``: how many times its size a download needs on this disk until
        it is stored (2 when the repository seals it into a second file)."""
        self.staging_dir = staging_dir / "downloads"
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.chunk_bytes = chunk_bytes
        self.space_factor = space_factor
        self.progress = progress
        self.pool = pool or make_pool(timeout_s)

    def request(
        self, method: str, url: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> urllib3.BaseHTTPResponse:
        return request(self.pool, method, url, headers, **kwargs)

    def download(
        self,
        url: str,
        *,
        label: str,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> Downloaded:
        key = hashlib.sha256(f"{url}\n{expected_digest or ''}".encode()).hexdigest()[:32]
        part = self.staging_dir / f"{key}.part"
        record_path = self.staging_dir / f"{key}.json"
        record = _read_record(record_path)
        offset = part.stat().st_size if part.exists() else 0
        if offset and (record.get("url") != url or not _resumable(record, expected_digest)):
            offset = 0
        request_headers = dict(headers or {})
        if offset:
            request_headers["Range"] = f"bytes={offset}-"
            validator = _validator(record)
            if validator:
                request_headers["If-Range"] = validator

        response = self.request(
            "GET", url, request_headers, preload_content=False, decode_content=False
        )
        try:
            if response.status == 416 and offset and record.get("total") == offset:
                response.drain_conn()
                with part.open("rb") as kept:
                    digest, _ = hash_stream(kept)
                return self._finish(part, record_path, digest, 0, offset, expected_digest,
                                    expected_size, url)
            if response.status == 206 and offset:
                start, total = _parse_content_range(response.headers.get("Content-Range", ""))
                if start != offset:
                    raise SourceError(f"{url}: server resumed at byte {start}, asked {offset}")
            elif response.status == 200:
                offset = 0
                length = response.headers.get("Content-Length")
                total = int(length) if length is not None else None
            else:
                raise SourceError(
                    f"{url} answered HTTP {response.status}; check the URL and that the "
                    "mirror serves the file"
                )
            if expected_size is not None and total is not None and total != expected_size:
                raise IntegrityError(
                    f"{url} is {total} bytes, expected {expected_size}: the mirror serves a "
                    "different file; fix the mirror or the catalog entry"
                )
            if total is not None:
                ensure_free_space(self.staging_dir, (total - offset) * self.space_factor,
                                  f"downloading {label} ({human_bytes(total)})")
            _write_record(record_path, url, response.headers, total)
            task = self.progress.task(label, total=total)
            task.reset(completed=offset, total=total)
            try:
                hasher, transferred = self._stream(response, part, offset, task)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                part.unlink(missing_ok=True)
                record_path.unlink(missing_ok=True)
                raise disk_full(self.staging_dir, f"downloading {label}; the partial "
                                "download was deleted") from exc
            finally:
                task.close()
        finally:
            response.release_conn()
        return self._finish(part, record_path, hasher.hexdigest(), transferred, offset,
                            expected_digest, expected_size, url)

    def _stream(
        self, response: urllib3.BaseHTTPResponse, part: Path, offset: int, task: ProgressTask
    ) -> tuple[Any, int]:
        """Append the body to ``part``, hashing it as it arrives: (sha256 object, bytes)."""
        digest = hashlib.sha256()
        if offset:  # the bytes kept from an interrupted attempt count towards the digest
            with part.open("rb") as kept:
                hash_stream(kept, progress=None, hasher=digest, limit=offset)
        transferred = 0
        mode = "r+b" if offset else "wb"
        with part.open(mode, buffering=0) as sink:
            sink.seek(offset)
            sink.truncate()
            try:
                # read1 returns what the socket has (up to chunk_bytes), so progress and
                # the resumable partial file advance steadily even on slow links.
                while chunk := response.read1(self.chunk_bytes):
                    if sink.write(chunk) != len(chunk):  # a short write: the disk is full
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(part))
                    digest.update(chunk)
                    transferred += len(chunk)
                    task.advance(len(chunk))
                os.fsync(sink.fileno())
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if is_disk_full(exc):
                    raise
                raise SourceError(
                    f"download interrupted after {offset + transferred} bytes ({exc}); "
                    "run the pull again to resume where it stopped"
                ) from None
        return digest, transferred

    def _finish(
        self,
        part: Path,
        record_path: Path,
        digest: str,
        transferred: int,
        resumed_from: int,
        expected_digest: str | None,
        expected_size: int | None,
        url: str,
    ) -> Downloaded:
        actual = part.stat().st_size
        problem = None
        if expected_size is not None and actual != expected_size:
            problem = f"is {actual} bytes, expected {expected_size}"
        elif expected_digest is not None and digest != expected_digest:
            problem = f"has sha256 {digest}, expected {expected_digest}"
        if problem:
            part.unlink(missing_ok=True)
            record_path.unlink(missing_ok=True)
            raise IntegrityError(
                f"{url} {problem}; the download was discarded. The mirror holds corrupted or "
                "different bytes: fix the mirror or the expected digest, then pull again"
            )
        record_path.unlink(missing_ok=True)
        return Downloaded(part, digest, actual, transferred, resumed_from)


def _read_record(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_record(path: Path, url: str, headers: Any, total: int | None) -> None:
    record = {
        "url": url,
        "etag": headers.get("ETag"),
        "last_modified": headers.get("Last-Modified"),
        "total": total,
    }
    path.write_text(json.dumps(record))


def _validator(record: dict[str, Any]) -> str | None:
    etag = record.get("etag")
    if etag and not str(etag).startswith("W/"):
        return str(etag)
    modified = record.get("last_modified")
    return str(modified) if modified else None


def _resumable(record: dict[str, Any], expected_digest: str | None) -> bool:
    """Resume only when a splice would be caught: a validator or a digest to check."""
    return bool(_validator(record) or expected_digest)


def _parse_content_range(value: str) -> tuple[int, int | None]:
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if not match:
        raise SourceError(f"server sent an unusable Content-Range {value!r}")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total
