"""A local stand-in for the Hugging Face hub, for the ``hf:`` source tests.

This is NOT the Hugging Face hub. No real hub can run on, or be reached from, the machines
these tests run on, so this module serves a small in-memory model repository over HTTP on
127.0.0.1 and mimics only the part of the hub's HTTP API that ``huggingface_hub`` (2.x)
uses for the calls SutazAI makes, and nothing else:

* ``GET /api/models/{repo_id}[/revision/{revision}]`` — what ``HfApi.model_info`` and
  ``HfApi.repo_info`` call; with ``?blobs=true`` (``files_metadata=True``) every sibling
  carries ``size``, ``blobId`` and, for LFS files, ``lfs: {sha256, size, pointerSize}``.
* ``GET /api/models/{repo_id}/tree/{revision}[/{path}]?recursive=...`` — the tree listing
  ``snapshot_download`` reads when it is online (one page; no ``Link`` pagination).
* ``GET`` and ``HEAD /{repo_id}/resolve/{revision}/{filename}`` — the URL ``hf_hub_url``
  builds. Bytes are served directly (no redirect to a CDN) with single-range ``Range``
  support (``206``/``416``, ``If-Range``), and the headers ``huggingface_hub`` reads from a
  HEAD: ``X-Repo-Commit``, ``ETag`` (git blob sha1, or the LFS sha256), ``X-Linked-Etag`` and
  ``X-Linked-Size`` for LFS files, ``Content-Length`` and ``Accept-Ranges``.
* Errors the way the hub reports them: ``404`` with ``X-Error-Code`` ``RepoNotFound``,
  ``RevisionNotFound`` or ``EntryNotFound`` (which ``huggingface_hub`` maps to its typed
  exceptions).

Xet storage, authentication, gated repos, pagination, datasets/spaces, uploads and every
other endpoint are not mimicked. An LFS file can advertise a sha256 different from the
bytes it serves, to stand for a corrupted mirror. Every request is logged (method, kind,
path, status) so a test can assert what was and was not downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_COMMIT = "0123456789abcdef0123456789abcdef01234567"
LAST_MODIFIED = "2024-05-01T12:00:00.000Z"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_TRUE = ("1", "true", "True")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of ``data`` (what the hub calls ``blobId``/``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubRepo:
    """One model repository at one commit: files (path -> bytes), some stored with LFS.

    ``lfs_sha256`` overrides the sha256 advertised for an LFS file (the bytes served stay
    ``files[path]``), which is how a test stands for a mirror serving corrupted bytes.
    """

    repo_id: str
    files: dict[str, bytes]
    lfs: set[str] = field(default_factory=set)
    lfs_sha256: dict[str, str] = field(default_factory=dict)
    sha: str = DEFAULT_COMMIT
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit; 'main' implied

    def __post_init__(self) -> None:
        assert re.fullmatch(r"[0-9a-f]{40}", self.sha), "a commit sha is 40 lowercase hex"
        assert self.lfs <= set(self.files) and set(self.lfs_sha256) <= self.lfs
        self.refs = {"main": self.sha, **self.refs}

    def commit_for(self, revision: str) -> str | None:
        if revision == self.sha:
            return self.sha
        return self.refs.get(revision)

    def sha256(self, path: str) -> str:
        """The sha256 the hub advertises for an LFS file."""
        return self.lfs_sha256.get(path) or hashlib.sha256(self.files[path]).hexdigest()

    def pointer(self, path: str) -> bytes:
        """The Git LFS pointer committed in git in place of an LFS file's bytes."""
        return (
            "version https://git-lfs.github.com/spec/v1\n"
            f"oid sha256:{self.sha256(path)}\nsize {len(self.files[path])}\n"
        ).encode()

    def blob_id(self, path: str) -> str:
        return git_blob_sha1(self.pointer(path) if path in self.lfs else self.files[path])

    def etag(self, path: str) -> str:
        return f'"{self.sha256(path) if path in self.lfs else self.blob_id(path)}"'

    def lfs_info(self, path: str, sha_key: str) -> dict[str, Any] | None:
        if path not in self.lfs:
            return None
        return {sha_key: self.sha256(path), "size": len(self.files[path]),
                "pointerSize": len(self.pointer(path))}


@dataclass
class HubRequest:
    """One request the endpoint answered."""

    method: str
    kind: str  # "model_info", "tree", "resolve" or "other"
    path: str  # URL path, percent-decoded, without the query
    query: dict[str, list[str]]
    status: int
    range: str | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    endpoint: HubEndpoint

    def __init__(self, endpoint: HubEndpoint) -> None:
        self.endpoint = endpoint
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-body is not the test's failure

    def close_connections(self) -> None:
        """Cut kept-alive connections so a stopped endpoint really answers nothing."""
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the hub; every answer has a length
    server: _Server
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    # ------------------------------------------------------------------ routing
    def _dispatch(self, *, head: bool) -> None:
        url = urlsplit(self.path)
        segments = [unquote(s) for s in url.path.split("/")[1:]]
        query = parse_qs(url.query)
        self._kind, self._query, self._head = "other", query, head
        self._path = unquote(url.path)
        if segments[:2] == ["api", "models"] and not head:
            self._api(segments[2:], query)
            return
        for at in (1, 2):  # repo ids are NAME or ORG/NAME
            if len(segments) > at + 2 and segments[at] == "resolve":
                self._kind = "resolve"
                self._resolve("/".join(segments[:at]), segments[at + 1],
                              "/".join(segments[at + 2:]))
                return
        self._error(404, None, "Not Found")

    def _api(self, rest: list[str], query: dict[str, list[str]]) -> None:
        for at in (1, 2):
            if len(rest) > at + 1 and rest[at] in ("revision", "tree"):
                repo_id, kind, revision = "/".join(rest[:at]), rest[at], rest[at + 1]
                if kind == "revision" and len(rest) == at + 2:
                    self._model_info(repo_id, revision, query)
                    return
                if kind == "tree":
                    self._tree(repo_id, revision, "/".join(rest[at + 2:]), query)
                    return
        if 1 <= len(rest) <= 2:
            self._model_info("/".join(rest), "main", query)
            return
        self._error(404, None, "Not Found")

    def _lookup(self, repo_id: str, revision: str) -> tuple[HubRepo, str] | None:
        repo = self.server.endpoint.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        commit = repo.commit_for(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
            return None
        return repo, commit

    # ----------------------------------------------------------------- answers
    def _model_info(self, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
        self._kind = "model_info"
        found = self._lookup(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        blobs = query.get("blobs", [""])[0] in _TRUE
        siblings = []
        for path in sorted(repo.files):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=len(repo.files[path]), blobId=repo.blob_id(path))
                if path in repo.lfs:
                    sibling["lfs"] = repo.lfs_info(path, "sha256")
            siblings.append(sibling)
        author = repo_id.split("/")[0] if "/" in repo_id else None
        self._json({
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id,
            "modelId": repo_id, "author": author, "sha": commit,
            "lastModified": LAST_MODIFIED, "createdAt": LAST_MODIFIED, "private": False,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": siblings,
            "usedStorage": sum(len(data) for data in repo.files.values()),
        })

    def _tree(
        self, repo_id: str, revision: str, folder: str, query: dict[str, list[str]]
    ) -> None:
        self._kind = "tree"
        found = self._lookup(repo_id, revision)
        if found is None:
            return
        repo, _ = found
        recursive = query.get("recursive", [""])[0] in _TRUE
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for path in sorted(repo.files):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                directory = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(directory, {
                        "type": "directory", "path": directory, "size": 0,
                        "oid": git_blob_sha1(f"tree {directory}".encode()),
                    })
            if recursive or len(parts) == 1:
                item: dict[str, Any] = {"type": "file", "path": path,
                                        "size": len(repo.files[path]), "oid": repo.blob_id(path)}
                if path in repo.lfs:
                    item["lfs"] = repo.lfs_info(path, "oid")
                entries[path] = item
        if prefix and not entries:
            self._error(404, "EntryNotFound", f"{folder} does not exist on {revision}")
            return
        self._json([entries[key] for key in sorted(entries)])

    def _resolve(self, repo_id: str, revision: str, filename: str) -> None:
        found = self._lookup(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        if filename not in repo.files:
            self._error(404, "EntryNotFound", f"{filename} does not exist on {revision}",
                        {"X-Repo-Commit": commit})
            return
        data, etag = repo.files[filename], repo.etag(filename)
        headers = {"X-Repo-Commit": commit, "ETag": etag, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if filename in repo.lfs:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(len(data))})
        status, body = 200, data
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        match = _RANGE.fullmatch(wanted.strip()) if wanted else None
        if match and (if_range is None or if_range == etag) and any(match.groups()):
            first, last = match.groups()
            if first:
                start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
            else:  # a suffix range: the last N bytes
                start, end = max(len(data) - int(last), 0), len(data) - 1
            if start >= len(data) or start > end:
                self._send(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
                return
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(status, body, headers)

    # ------------------------------------------------------------------ output
    def _json(self, payload: Any) -> None:
        self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _error(
        self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None
    ) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.server.endpoint.record(HubRequest(
            self.command, self._kind, self._path, self._query, status, self.headers.get("Range")
        ))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not self._head:
            self.wfile.write(body)


class HubEndpoint:
    """The stand-in hub on ``http://127.0.0.1:<free port>``; use as a context manager.

    ``url`` is what ``HF_ENDPOINT`` (or ``endpoint=``) should be set to. ``requests`` lists
    every request answered, in order.
    """

    def __init__(self, repos: Iterable[HubRepo] = ()) -> None:
        self.repos: dict[str, HubRepo] = {repo.repo_id: repo for repo in repos}
        self.requests: list[HubRequest] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def add(self, repo: HubRepo) -> HubRepo:
        self.repos[repo.repo_id] = repo
        return repo

    def record(self, request: HubRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def seen(self, kind: str | None = None, method: str | None = None) -> list[HubRequest]:
        """The requests answered so far, optionally of one kind and method."""
        with self._lock:
            return [r for r in self.requests
                    if (kind is None or r.kind == kind) and (method is None or r.method == method)]

    def start(self) -> HubEndpoint:
        self._server = _Server(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="hub-endpoint", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open connections; the port then refuses connections."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(5)
        self._server = None

    def __enter__(self) -> HubEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
