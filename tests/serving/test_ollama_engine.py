"""The Ollama engine against a local stand-in for Ollama's HTTP API.

No Ollama server binary is obtainable on these machines (PyPI only has the client), so
this test runs a small HTTP server on 127.0.0.1 that is NOT Ollama: it implements only the
three calls SutazAI makes (``GET /api/version``, ``HEAD``/``POST /api/blobs/sha256:D``,
``POST /api/create``) the way Ollama documents them, checks the uploaded bytes against
their digest as Ollama does, and records every request. It proves what SutazAI sends, not
that a real Ollama accepts it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sutazai.config import Settings
from sutazai.errors import EngineError
from sutazai.repository import Repository
from sutazai.repository.manifest import FileEntry, Manifest
from sutazai.serving.engines import OllamaEngine, ollama_base_url


class OllamaStandIn(ThreadingHTTPServer):
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, object]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"  # as OLLAMA_HOST is often written


class _Handler(BaseHTTPRequestHandler):
    server: OllamaStandIn

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: object = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, None))
        self._reply(200, {"version": "0.12.6"} if self.path == "/api/version" else None)

    def do_HEAD(self) -> None:
        self.server.requests.append(("HEAD", self.path, None))
        digest = self.path.removeprefix("/api/blobs/sha256:")
        self._reply(200 if digest in self.server.blobs else 404)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.startswith("/api/blobs/sha256:"):
            digest = self.path.removeprefix("/api/blobs/sha256:")
            self.server.requests.append(("POST", self.path, len(body)))
            if hashlib.sha256(body).hexdigest() != digest:
                self._reply(400, {"error": "digest mismatch"})
                return
            self.server.blobs[digest] = body
            self._reply(201)
            return
        payload = json.loads(body)
        self.server.requests.append(("POST", self.path, payload))
        files = payload.get("files", {})
        missing = [d for d in files.values() if d.removeprefix("sha256:") not in self.server.blobs]
        self._reply(400 if missing else 200,
                    {"error": f"missing blobs {missing}"} if missing else {"status": "success"})


@pytest.fixture
def ollama() -> Iterator[OllamaStandIn]:
    server = OllamaStandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def gguf_version(repo: Repository, tmp_path: Path) -> Manifest:
    data = b"GGUF" + bytes(range(256)) * 64
    source = tmp_path / "tiny.gguf"
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    repo.ingest_file(source, digest)
    files = [FileEntry(path="tiny.gguf", size=len(data), digest=digest)]
    manifest, _ = repo.publish(name="tiny", source=f"file:{source}", revision="1",
                               format="gguf", tasks=["text-generation"], license="mit",
                               files=files)
    return manifest


def test_model_is_created_from_the_repository_gguf_uploaded_once(
    ollama: OllamaStandIn, settings: Settings, repo: Repository, tmp_path: Path
) -> None:
    """Against the stand-in (not a real Ollama): upload by digest, create, reuse the blob."""
    manifest = gguf_version(repo, tmp_path)
    settings = settings.model_copy(update={"ollama_host": ollama.host})
    engine = OllamaEngine(settings)
    folder = repo.ensure_snapshot(manifest)
    digest = manifest.files[0].digest

    running = engine.start(manifest, folder, tmp_path / "work")
    assert running.base_url == f"http://{ollama.host}" and running.model == "tiny:1"
    assert running.details["ollama_version"] == "0.12.6"
    assert ollama.requests[1:] == [
        ("HEAD", f"/api/blobs/sha256:{digest}", None),
        ("POST", f"/api/blobs/sha256:{digest}", manifest.files[0].size),
        ("POST", "/api/create", {"model": "tiny:1", "files": {"tiny.gguf": f"sha256:{digest}"},
                                 "stream": False}),
    ]
    ollama.requests.clear()
    engine.start(manifest, folder, tmp_path / "work")
    assert [r[0] for r in ollama.requests] == ["GET", "HEAD", "POST"]  # no second upload


def test_no_ollama_server_is_a_clear_error(settings: Settings, repo: Repository,
                                           tmp_path: Path) -> None:
    from sutazai.serving.process import free_port

    manifest = gguf_version(repo, tmp_path)
    settings = settings.model_copy(update={"ollama_host": f"127.0.0.1:{free_port()}"})
    with pytest.raises(EngineError, match=r"no Ollama server answers at http://127\.0\.0\.1:.*"
                                          "OLLAMA_HOST"):
        OllamaEngine(settings).start(manifest, repo.ensure_snapshot(manifest), tmp_path)


def test_ollama_host_without_scheme() -> None:
    assert ollama_base_url("0.0.0.0:11434") == "http://0.0.0.0:11434"
    assert ollama_base_url("https://ollama.internal/") == "https://ollama.internal"
