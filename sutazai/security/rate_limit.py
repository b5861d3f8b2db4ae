"""Per-key rate limits: token buckets in this process, or shared by every replica.

In-process token buckets (:class:`RateLimiter`) let N replicas allow N times a key's rate.
With ``rate_limit_store`` set, the buckets live in one Redis-compatible server instead
(Redis, Valkey, or the FalkorDB SutazAI already runs for its graph): one atomic Lua script
per request refills and takes a token, on the server's clock, so replicas neither race nor
disagree about time.

Serving must not stop because the limiter's store did: when the store does not answer
within ``timeout_s`` the request is limited by the local bucket instead, a warning is
logged (at most every 30 s), and the store is not asked again for ``retry_after_s``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sutazai.config import Settings

LOG = logging.getLogger(__name__)

PASSWORD_SECRET = "serving/rate-limit-password"
KEY_PREFIX = "sutazai:ratelimit:"

# KEYS[1] the bucket; ARGV rate (tokens/s), burst. Returns the seconds to wait, as a
# string (a Lua number returned as such would be truncated to an integer).
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RateLimiter:
    """Token buckets, one per key: ``take`` answers 0 (go) or the seconds until a token."""

    def __init__(self, rps: float, burst: int) -> None:
        self.rps, self.burst = rps, burst
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)
        self.lock = threading.Lock()

    def take(self, key: str, rps: float | None = None, burst: int | None = None,
             now: float | None = None) -> float:
        rate, size = rps or self.rps, burst or self.burst
        now = time.monotonic() if now is None else now
        with self.lock:
            tokens, last = self.buckets.get(key, (float(size), now))
            tokens = min(float(size), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self.buckets[key] = (tokens - 1.0, now)
                return 0.0
            self.buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate

    async def acquire(self, key: str, rps: float | None = None, burst: int | None = None
                      ) -> float:
        """:meth:`take`, with the signature of the shared limiter."""
        return self.take(key, rps, burst)


class SharedRateLimiter:
    """Token buckets in a Redis-compatible server, shared by every replica."""

    def __init__(self, url: str, password: str | None, fallback: RateLimiter, *,
                 timeout_s: float = 0.25, retry_after_s: float = 5.0) -> None:
        self.url = url  # checked when the settings load
        self._password = password
        self.fallback = fallback
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._script: Any = None
        self._down_until = 0.0
        self._warned_at = 0.0

    def _connection(self) -> Any:
        """The asyncio client of this event loop (a client cannot move between loops)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            import redis.asyncio

            self._client = redis.asyncio.Redis.from_url(
                self.url, password=self._password, socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s, retry=None)
            self._script = self._client.register_script(TOKEN_BUCKET)
            self._client_loop = loop
        return self._script

    async def acquire(self, key: str, rps: float | None = None, burst: int | None = None
                      ) -> float:
        """0 to go on, else the seconds until the key's next token."""
        import redis

        rate, size = rps or self.fallback.rps, burst or self.fallback.burst
        if time.monotonic() < self._down_until:
            return self.fallback.take(key, rate, size)
        try:
            script = self._connection()
            wait = await script(keys=[KEY_PREFIX + key], args=[rate, size])
            return float(wait)
        except (redis.RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self.retry_after_s
            if time.monotonic() - self._warned_at > 30:
                self._warned_at = time.monotonic()
                LOG.warning("the rate-limit store %s did not answer (%s); limiting per "
                            "process until it does", self.url, type(exc).__name__)
            return self.fallback.take(key, rate, size)


def shared_limiter(settings: Settings, fallback: RateLimiter) -> SharedRateLimiter | None:
    """The shared limiter ``settings`` ask for, or None for per-process buckets."""
    if not settings.rate_limit_url:
        return None
    from sutazai.security.secrets import optional_secret

    password = optional_secret(settings, PASSWORD_SECRET)
    return SharedRateLimiter(settings.rate_limit_url,
                             password.get_secret_value() if password else None, fallback)
