"""What several benchmark scripts share: random payloads, and a gateway in a process of
its own (so the load generator and the gateway do not share one interpreter's GIL)."""

from __future__ import annotations

import hashlib
import os
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
