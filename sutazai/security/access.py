"""Who may do what: API keys mapped to roles, per-key rate limits, and audited denials.

*Keys.* An API key is ``sk-sutazai-<id>.<secret>``: the id (12 hex digits) names the key in
audit records, metrics and ``sutazai keys list``; the secret is 32 random bytes. The key
table, one JSON secret (``api_keys_secret``, default ``serving/api-keys``) in the secret
provider (Vault in production), holds each key's sha256, never the key: whoever can read
Vault still cannot call the API, and a key is shown once, when it is created. sha256
rather than a slow password hash because the secret has 256 bits of entropy; guessing is
hopeless either way, and a slow hash would cost every request milliseconds.

*Roles.* ``viewer`` reads (metrics, model lists), ``operator`` also serves completions and
ingests data (ratings, documents, pulls), ``admin`` also promotes, deletes and manages
keys. Checks name a permission, never a role, so a role can change without touching them.

*Rate limits.* A token bucket per key (``rate_limit_rps``/``rate_limit_burst``, or the
key's own numbers); an empty bucket answers HTTP 429 with ``Retry-After``. Buckets live
in the serving process, so N replicas allow N times the rate; put a shared limiter in the
ingress when that matters.

*Denials* (401, 403, 429, and refused CLI actions) are audited as ``access.denied``. An
attacker hammering the API with bad keys must not turn each request into an fsync'd audit
line, so at most one record per (who, why) a second is written, carrying the number of
denials it stands for.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from sutazai.errors import ConfigError, SutazAIError
from sutazai.security.rate_limit import RateLimiter, SharedRateLimiter, shared_limiter

if TYPE_CHECKING:
    from sutazai.config import Settings

LOG = logging.getLogger(__name__)

Role = Literal["viewer", "operator", "admin"]
Permission = Literal["read", "serve", "ingest", "promote", "delete", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
PERMISSIONS: dict[Role, frozenset[Permission]] = {
    "viewer": frozenset({"read"}),
    "operator": frozenset({"read", "serve", "ingest"}),
    "admin": frozenset({"read", "serve", "ingest", "promote", "delete", "admin"}),
}
KEY_PREFIX = "sk-sutazai-"
KEY_PATTERN = re.compile(r"^sk-sutazai-([0-9a-f]{12})\.([A-Za-z0-9_-]{20,})$")
REFRESH_S = 30.0


class AccessDeniedError(SutazAIError):
    """The caller's key or role does not allow the action (HTTP 401/403, CLI exit 1)."""


class ApiKey(BaseModel):
    """One entry of the key table: everything about a key except the key itself."""

    id: str = Field(pattern=r"^[0-9a-f]{12}$")
    name: str = Field(min_length=1, max_length=64)
    role: Role
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created: datetime
    expires: datetime | None = None
    rate_limit_rps: float | None = Field(default=None, gt=0)
    rate_limit_burst: int | None = Field(default=None, ge=1)

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires


class KeyTable(BaseModel):
    version: Literal[1] = 1
    keys: dict[str, ApiKey] = Field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, where: str) -> KeyTable:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ConfigError(f"the API key table {where} is not valid ({exc.error_count()} "
                              "problems, first: " + exc.errors()[0]["msg"] + "); restore it "
                              "from Vault's version history or recreate the keys") from None


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id and name and what its role allows."""

    id: str
    name: str
    role: Role
    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None

    @property
    def permissions(self) -> frozenset[Permission]:
        return PERMISSIONS[self.role]

    def allows(self, permission: Permission) -> bool:
        return permission in self.permissions

    @property
    def actor(self) -> str:
        return f"key:{self.id}({self.name})"


@dataclass(frozen=True)
class Denial:
    status: int
    code: str
    message: str
    actor: str = "anonymous"
    retry_after_s: float | None = None


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(name: str, role: Role, *, expires_in: timedelta | None = None,
            rate_limit_rps: float | None = None, rate_limit_burst: int | None = None,
            now: datetime | None = None) -> tuple[str, ApiKey]:
    """A fresh key and its table entry; the key is returned once and never stored."""
    now = now or datetime.now(UTC)
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}.{secrets.token_urlsafe(32)}"
    entry = ApiKey(id=key_id, name=name, role=role, sha256=key_digest(key), created=now,
                   expires=now + expires_in if expires_in else None,
                   rate_limit_rps=rate_limit_rps, rate_limit_burst=rate_limit_burst)
    return key, entry


def authenticate(table: KeyTable, presented: str | None, now: datetime | None = None
                 ) -> Principal | Denial:
    """The principal behind ``presented``, or why it is refused (401)."""
    if not presented:
        return Denial(401, "missing_api_key", "this endpoint needs an API key: send "
                      "'Authorization: Bearer sk-sutazai-...' (an admin creates one with "
                      "'sutazai keys create NAME --role operator')")
    match = KEY_PATTERN.match(presented)
    entry = table.keys.get(match.group(1)) if match else None
    # compare_digest on the digests: the time taken says nothing about how close a guess is
    if entry is None or not hmac.compare_digest(entry.sha256, key_digest(presented)):
        return Denial(401, "invalid_api_key", "the API key is not valid (unknown or revoked): "
                      "check SUTAZAI_API_KEY or ask an admin for a new key")
    now = now or datetime.now(UTC)
    if entry.expired(now):
        assert entry.expires is not None
        return Denial(401, "expired_api_key", f"API key {entry.id} ({entry.name}) expired on "
                      f"{entry.expires:%Y-%m-%d %H:%M} UTC: ask an admin for a new one",
                      actor=f"key:{entry.id}({entry.name})")
    return Principal(entry.id, entry.name, entry.role, entry.rate_limit_rps,
                     entry.rate_limit_burst)


def forbidden(principal: Principal, permission: Permission, what: str) -> Denial:
    needed = next(role for role in ROLES if permission in PERMISSIONS[role])
    return Denial(403, "permission_denied", f"{what} needs permission '{permission}' (role "
                  f"{needed} or above); key {principal.id} ({principal.name}) has role "
                  f"{principal.role}", actor=principal.actor)


def presented_key(headers: MutableMapping[str, str] | dict[str, str]) -> str | None:
    """The key from ``Authorization: Bearer`` (what OpenAI clients send) or ``X-API-Key``."""
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key") or None


# --- the key table in the secret provider ------------------------------------------------


class KeyStore:
    """Reads and writes the key table through the settings' secret provider."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.api_keys_secret

    def _provider(self) -> Any:
        from sutazai.security.secrets import settings_provider

        return settings_provider(self.settings)

    def load(self) -> KeyTable:
        from sutazai.security.secrets import SecretNotFoundError

        try:
            text = self._provider().get(self.name).get_secret_value()
        except SecretNotFoundError:
            return KeyTable()
        return KeyTable.parse(text, f"(secret {self.name!r})")

    def save(self, table: KeyTable) -> None:
        provider = self._provider()
        put = getattr(provider, "put", None)
        if put is None:
            raise ConfigError(f"the secret provider {provider.label} is read-only: store the "
                              f"key table in secret {self.name!r} yourself, or use the file "
                              "or vault provider (SUTAZAI_SECRETS_PROVIDER)")
        put(self.name, table.model_dump_json(exclude_none=True))

    def add(self, entry: ApiKey) -> None:
        table = self.load()
        table.keys[entry.id] = entry
        self.save(table)

    def revoke(self, key_id: str) -> ApiKey:
        table = self.load()
        entry = table.keys.pop(key_id, None)
        if entry is None:
            raise AccessDeniedError(f"no API key {key_id!r}: 'sutazai keys list' shows them")
        self.save(table)
        return entry


# --- rate limits ----------------------------------------------------------------------------


# --- audited denials ------------------------------------------------------------------------


class DenialRecorder:
    """Audits denials, at most one record per (actor, reason) per ``interval_s``; the next
    record says how many were folded into it."""

    def __init__(self, settings: Settings, interval_s: float = 1.0) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self.last: dict[tuple[str, str], float] = {}
        self.folded: dict[tuple[str, str], int] = {}
        self.lock = threading.Lock()

    def due(self, denial: Denial, now: float | None = None) -> int | None:
        """The count to record now, or None when this denial is folded into a later one."""
        now = time.monotonic() if now is None else now
        key = (denial.actor, denial.code)
        with self.lock:
            if now - self.last.get(key, -1e9) < self.interval_s:
                self.folded[key] = self.folded.get(key, 0) + 1
                return None
            self.last[key] = now
            return 1 + self.folded.pop(key, 0)

    def record(self, denial: Denial, target: str, details: dict[str, Any] | None = None
               ) -> None:
        count = self.due(denial)
        if count is None:
            return
        from sutazai.security.audit import audit

        audit(self.settings, "access.denied", target, actor=denial.actor, result="denied",
              details={"reason": denial.code, "status": denial.status, "count": count,
                       **(details or {})})


# --- the HTTP guard -------------------------------------------------------------------------


def permission_for(method: str, path: str) -> Permission | None:
    """What a request needs; None for the unauthenticated health probes only."""
    if path in ("/health", "/health/live", "/health/ready"):
        return None
    if path in ("/metrics", "/openapi.json", "/v1/models") or path.startswith("/v1/models/"):
        return "read"
    if path == "/v1/feedback":
        return "ingest"
    return "serve"


class AccessGuard:
    """Authenticates, authorises and rate-limits requests; reloads the key table every
    ``refresh_s`` in the background (a revoked key stops working within that time)."""

    def __init__(self, settings: Settings, *, refresh_s: float = REFRESH_S,
                 store: KeyStore | None = None) -> None:
        self.settings = settings
        self.store = store or KeyStore(settings)
        self.refresh_s = refresh_s

        local = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
        self.limiter: RateLimiter | SharedRateLimiter = shared_limiter(settings, local) or local
        self.denials = DenialRecorder(settings)
        self.table = self.store.load()
        self.loaded_at = time.monotonic()
        self.reloading = False

    def require_keys(self) -> AccessGuard:
        if not self.table.keys:
            raise ConfigError(
                f"no API keys in secret {self.settings.api_keys_secret!r}: create one with "
                "'sutazai keys create NAME --role operator', or set SUTAZAI_AUTH_REQUIRED="
                "false for a private server on loopback")
        return self

    def reload(self) -> None:
        try:
            self.table = self.store.load()
        except SutazAIError as exc:  # keep serving with the last table; say so
            LOG.warning("could not reload the API key table (%s); keeping the last one", exc)
        finally:
            self.loaded_at = time.monotonic()
            self.reloading = False

    async def check(self, method: str, path: str, headers: MutableMapping[str, str]
                    ) -> Principal | Denial | None:
        permission = permission_for(method, path)
        if permission is None:
            return None
        found = authenticate(self.table, presented_key(headers))
        if isinstance(found, Denial):
            return found
        if not found.allows(permission):
            return forbidden(found, permission, f"{method} {path}")
        wait = await self.limiter.acquire(found.id, found.rate_limit_rps,
                                          found.rate_limit_burst)
        if wait > 0:
            return Denial(429, "rate_limit_exceeded", f"API key {found.id} ({found.name}) is "
                          f"over its rate limit; retry in {wait:.2f} s", actor=found.actor,
                          retry_after_s=wait)
        return found


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AccessMiddleware:
    """Pure ASGI middleware (no per-request task or body copy, unlike BaseHTTPMiddleware,
    so streams stay streams and the cost is a dict lookup, a hash and a bucket update)."""

    def __init__(self, app: ASGIApp, guard: AccessGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = self.guard
        if not guard.reloading and time.monotonic() - guard.loaded_at > guard.refresh_s:
            guard.reloading = True
            asyncio.get_running_loop().run_in_executor(None, guard.reload)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers") or ()}
        method, path = scope["method"], scope["path"]
        found = await guard.check(method, path, headers)
        if isinstance(found, Denial):
            client = scope.get("client")
            details = {"client": client[0] if client else None}
            asyncio.get_running_loop().run_in_executor(
                None, _record_quietly, guard.denials, found, f"{method} {path}", details)
            await _refuse(found, send)
            return
        if found is not None:
            scope.setdefault("state", {})["principal"] = found
        await self.app(scope, receive, send)


def _record_quietly(recorder: DenialRecorder, denial: Denial, target: str,
                    details: dict[str, Any]) -> None:
    try:
        recorder.record(denial, target, details)
    except SutazAIError:  # the refusal stands; a broken audit log must be loud, not fatal
        LOG.exception("could not audit a denied request")


async def _refuse(denial: Denial, send: Send) -> None:
    kind = {401: "authentication_error", 403: "permission_error",
            429: "rate_limit_error"}.get(denial.status, "invalid_request_error")
    body = json.dumps({"error": {"message": denial.message, "type": kind, "param": None,
                                 "code": denial.code}}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if denial.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="sutazai"'))
    if denial.retry_after_s is not None:
        headers.append((b"retry-after", str(max(1, round(denial.retry_after_s + 0.5))).encode()))
    await send({"type": "http.response.start", "status": denial.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --- the CLI --------------------------------------------------------------------------------


def cli_principal(settings: Settings) -> Principal:
    """The CLI caller: the key in SUTAZAI_API_KEY, else the home owner with ``cli_role``."""
    key = os.environ.get("SUTAZAI_API_KEY")
    if not key:
        return Principal("local", os.environ.get("USER") or "local", settings.cli_role)
    found = authenticate(KeyStore(settings).load(), key)
    if isinstance(found, Denial):
        DenialRecorder(settings).record(found, "cli")
        raise AccessDeniedError(f"SUTAZAI_API_KEY: {found.message}")
    return found


def require(settings: Settings, permission: Permission, what: str) -> Principal:
    """Refuse (audited) a CLI action the caller's role does not allow; else the caller."""
    principal = cli_principal(settings)
    if principal.allows(permission):
        return principal
    denial = forbidden(principal, permission, what)
    DenialRecorder(settings).record(denial, what, {"permission": permission})
    hint = ("use a key with that role in SUTAZAI_API_KEY" if principal.id == "local"
            else "ask an admin for a key with that role")
    raise AccessDeniedError(f"{denial.message}: {hint}")


def client_key(settings: Settings) -> str | None:
    """The key SutazAI's own clients (the graph's LLM extractor) send to ``sutazai serve``:
    ``SUTAZAI_API_KEY``, else the secret ``serving/client-key``, else none."""
    from sutazai.security.secrets import optional_secret

    if os.environ.get("SUTAZAI_API_KEY"):
        return os.environ["SUTAZAI_API_KEY"]
    found = optional_secret(settings, "serving/client-key")
    return found.get_secret_value() if found is not None else None


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m`` -> a timedelta (key lifetimes on the command line)."""
    match = re.fullmatch(r"\s*(\d+)\s*([dhm])\s*", text)
    if not match or int(match.group(1)) == 0:
        raise ConfigError(f"{text!r} is not a duration: write e.g. 90d, 12h or 30m")
    unit = {"d": "days", "h": "hours", "m": "minutes"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})
