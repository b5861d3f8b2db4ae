"""Debian's redis-server on 127.0.0.1 for the production profile's shared rate limits.

The password goes into a 0600 configuration file (``requirepass``), never the command line,
where ``ps`` would show it to every user of the machine.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sutazai.errors import ConfigError

CONFIG = """bind 127.0.0.1
port {port}
dir {dir}
protected-mode yes
appendonly yes
save ""
requirepass {password}
"""


def redis_binary() -> str:
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(found).exists():
        raise ConfigError("redis-server is not installed: run make system-deps "
                          "(scripts/install-system-deps.sh installs Debian's redis-server)")
    return found


def write_config(data_dir: Path, port: int, password: str) -> Path:
    """``redis.conf`` in ``data_dir`` (0600); the command is ``redis-server <that file>``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "redis.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(CONFIG.format(port=port, dir=data_dir, password=password))
    return path


def answers(port: int, password: str) -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, password=password,
                                socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False
