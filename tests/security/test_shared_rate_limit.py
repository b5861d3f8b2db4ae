"""Rate limits shared by replicas, in a real Redis-compatible server: the FalkorDB
(redis-server 8 with the graph module) that SutazAI embeds, on 127.0.0.1 with a password
from the secret provider; two gateways in front of a stand-in upstream play two replicas
(only /metrics is called, which the gateway answers itself)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sutazai.config import Settings, load_settings
from sutazai.errors import ConfigError
from sutazai.knowledge.server import EmbeddedFalkorDB
from sutazai.security.access import AccessGuard, new_key
from sutazai.security.rate_limit import PASSWORD_SECRET, RateLimiter, SharedRateLimiter
from sutazai.security.secrets import env_var
from sutazai.serving.gateway import GatewayThread, create_app
from sutazai.serving.process import free_port
from tests.helpers import upstream_engine
from tests.security.test_access import write_table

PASSWORD = "rate-limit-test-password"  # pragma: allowlist secret


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EmbeddedFalkorDB]:
    with EmbeddedFalkorDB(tmp_path / "limits", PASSWORD) as server:
        yield server


def replica_settings(settings: Settings, server: EmbeddedFalkorDB,
                     monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv(env_var(PASSWORD_SECRET), PASSWORD)
    return settings.model_copy(update={
        "rate_limit_store": f"redis://{server.host}:{server.port}/0"})


def test_two_replicas_share_one_bucket_per_key(
        settings: Settings, store: EmbeddedFalkorDB, monkeypatch: pytest.MonkeyPatch) -> None:
    key, entry = new_key("team", "viewer", rate_limit_rps=0.05, rate_limit_burst=3)
    write_table(settings, entry)
    shared = replica_settings(settings, store, monkeypatch)
    upstream = upstream_engine("http://127.0.0.1:9")  # never called: /metrics is local

    def codes(guards: list[AccessGuard]) -> list[int]:
        gateways = [GatewayThread(create_app(upstream, guard=g), "127.0.0.1", free_port())
                    for g in guards]
        for gateway in gateways:
            gateway.start()
        try:
            return [httpx.get(f"{gateways[i % 2].url}/metrics",
                              headers={"x-api-key": key}).status_code for i in range(8)]
        finally:
            for gateway in gateways:
                gateway.stop()

    together = codes([AccessGuard(shared), AccessGuard(shared)])
    assert together.count(200) == 3 and together[:3] == [200, 200, 200]  # one burst of 3
    assert set(together[3:]) == {429}
    apart = codes([AccessGuard(settings), AccessGuard(settings)])
    assert apart.count(200) == 6  # per-process buckets: 3 each


def test_a_store_that_stops_answering_falls_back_to_local_buckets(
        settings: Settings, store: EmbeddedFalkorDB, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    shared = replica_settings(settings, store, monkeypatch)
    limiter = AccessGuard(shared).limiter
    assert isinstance(limiter, SharedRateLimiter)

    async def takes(n: int) -> list[float]:
        return [await limiter.acquire("k", 0.05, 2) for _ in range(n)]

    assert [w == 0 for w in asyncio.run(takes(3))] == [True, True, False]
    assert not limiter.fallback.buckets  # the store answered
    store.stop()
    with caplog.at_level(logging.WARNING, logger="sutazai.security.rate_limit"):
        waits = asyncio.run(takes(4))
    assert [w == 0 for w in waits] == [True, True, False, False]  # a fresh local bucket
    assert "k" in limiter.fallback.buckets
    warnings = [r for r in caplog.records if "did not answer" in r.getMessage()]
    assert len(warnings) == 1 and PASSWORD not in caplog.text


def test_the_store_url_is_checked_and_never_holds_a_password(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUTAZAI_HOME", str(tmp_path / ".sutazai"))
    for url, message in (("http://cache:6379", "redis://"),
                         ("redis://:hunter2@cache:6379/0", PASSWORD_SECRET)):
        monkeypatch.setenv("SUTAZAI_RATE_LIMIT_STORE", url)
        with pytest.raises(ConfigError, match=message):
            load_settings()
    monkeypatch.setenv("SUTAZAI_RATE_LIMIT_STORE", "redis://cache:6379/0")
    assert load_settings().rate_limit_store == "redis://cache:6379/0"
    assert RateLimiter(1, 1).take("x") == 0  # the local limiter is untouched by the setting
