"""The production profile's shared services, for real: SutazAI's own PostgreSQL cluster and
Redis on 127.0.0.1, with passwords only in the secret provider."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from sutazai.config import Settings
from sutazai.learning.datastore import FeedbackStore
from sutazai.security.rate_limit import RateLimiter, shared_limiter
from sutazai.serving.process import free_port


def test_production_settings_point_every_store_at_the_servers(production: Settings) -> None:
    port = production.postgres_port
    assert production.learning_url == f"postgresql://sutazai@127.0.0.1:{port}/sutazai_learning"
    assert production.nas_storage == f"postgresql://sutazai@127.0.0.1:{port}/sutazai_nas"
    assert production.tracking_uri == f"http://127.0.0.1:{production.mlflow_port}"
    assert production.mlflow_store_url.endswith("/mlflow")
    assert production.rate_limit_url == f"redis://127.0.0.1:{production.redis_port}/0"
    embedded = Settings(home=production.home, profile="embedded")
    assert embedded.learning_url.startswith("sqlite:///")
    assert embedded.rate_limit_url is None


def test_learning_store_rows_live_in_postgresql(production: Settings) -> None:
    with FeedbackStore.open(production) as store:
        row = store.log_interaction("What is 2+2?", "4", model="m")
        assert store.engine.dialect.name == "postgresql"
    with FeedbackStore.open(production) as again:  # another connection sees the row
        assert again.engine.url.password is None  # the password never enters the URL
        assert row in {r["id"] for r in again.rows()}


def test_shared_rate_limit_lives_in_redis(production: Settings) -> None:
    limiter = shared_limiter(production, RateLimiter(1.0, 2))
    assert limiter is not None

    async def three() -> list[float]:
        return [await limiter.acquire("key-a", 1.0, 2) for _ in range(3)]

    waits = asyncio.run(three())
    assert waits[:2] == [0.0, 0.0] and waits[2] > 0  # the third within a second waits
    assert limiter.fallback.buckets == {}  # decided by Redis, not the per-process fallback


def sutazai(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sutazai.cli.main", *args], text=True,
                          capture_output=True, timeout=120, env={**os.environ, **env})


def test_a_refused_login_or_a_dead_mlflow_is_one_clear_line(production: Settings) -> None:
    wrong = sutazai("data", "stats", SUTAZAI_SECRET_POSTGRES_PASSWORD="not-the-password")
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    assert "a database did not answer" in wrong.stderr
    assert "password authentication failed" in wrong.stderr
    assert "not-the-password" not in wrong.stderr + wrong.stdout
    dead = sutazai("models", "list", SUTAZAI_MLFLOW_PORT=str(free_port()))
    assert dead.returncode != 0 and "Traceback" not in dead.stderr
    assert "does not answer (Connection refused)" in " ".join(dead.stderr.split())
