"""Secrets from HashiCorp Vault or OpenBao (KV v2), through ``hvac``.

Name ``mlflow/password`` is field ``password`` of the KV v2 secret ``<path>/mlflow`` in
mount ``<mount>``: one Vault secret per service holds its fields, which is how operators
usually lay them out and lets one read fill the cache for all of a service's fields.

Authentication: a token, AppRole (role_id + secret_id, for VMs and CI) or Kubernetes
(the pod's service-account JWT). Tokens with a TTL are renewed (``renew-self``) when they
come within ``renew_before_s`` of expiry; when renewal is refused (max TTL reached) or
the token is rejected, AppRole and Kubernetes log in again, and a token is re-read from
its source (a Vault Agent may have rotated the file).

Values are cached in process for ``cache_ttl_s``. While a value is fresh, Vault is not
asked, so a Vault outage or restart is invisible until the TTL runs out; then the read
fails with :class:`SecretUnavailableError` naming the secret, the address and what to
do — a stale password is never served past the TTL the operator chose.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import hvac
import hvac.exceptions
import requests
from pydantic import SecretStr

from sutazai.security.secret_base import (
    SecretError,
    SecretNotFoundError,
    SecretUnavailableError,
    check_name,
    credential,
)

if TYPE_CHECKING:
    from sutazai.security.secret_base import SecretsConfig

log = logging.getLogger(__name__)
Credential = Callable[[], SecretStr]
OUTAGES: tuple[type[Exception], ...] = (
    requests.exceptions.ConnectionError, requests.exceptions.Timeout,
    hvac.exceptions.VaultDown, hvac.exceptions.InternalServerError,
    hvac.exceptions.BadGateway,
)


@dataclass
class Lease:
    """The current token's renewability and expiry (monotonic clock; None: never)."""

    renewable: bool
    expires_at: float | None


def _lease(ttl: int | float | None, renewable: bool | None, now: float) -> Lease:
    return Lease(bool(renewable), now + float(ttl) if ttl else None)


class VaultAuth(Protocol):
    method: str

    def login(self, client: hvac.Client) -> tuple[int, bool]:
        """Set ``client.token``; return the token's (ttl seconds, 0 = none; renewable)."""
        ...


class TokenAuth:
    method = "token"

    def __init__(self, token: Credential) -> None:
        self.token = token

    def login(self, client: hvac.Client) -> tuple[int, bool]:
        client.token = self.token().get_secret_value()
        data = client.auth.token.lookup_self()["data"]
        return int(data.get("ttl") or 0), bool(data.get("renewable"))


class AppRoleAuth:
    method = "approle"

    def __init__(self, role_id: Credential, secret_id: Credential,
                 mount: str = "approle") -> None:
        self.role_id, self.secret_id, self.mount = role_id, secret_id, mount

    def login(self, client: hvac.Client) -> tuple[int, bool]:
        auth = client.auth.approle.login(
            role_id=self.role_id().get_secret_value(),
            secret_id=self.secret_id().get_secret_value(),
            mount_point=self.mount)["auth"]
        return int(auth.get("lease_duration") or 0), bool(auth.get("renewable"))


class KubernetesAuth:
    """Logs in with the pod's service-account JWT; Vault checks it with the cluster's
    TokenReview API and maps the (namespace, service account) to ``role``."""

    method = "kubernetes"

    def __init__(self, role: str, jwt: Credential, mount: str = "kubernetes") -> None:
        self.role, self.jwt, self.mount = role, jwt, mount

    def login(self, client: hvac.Client) -> tuple[int, bool]:
        auth = client.auth.kubernetes.login(
            role=self.role, jwt=self.jwt().get_secret_value(), mount_point=self.mount)["auth"]
        return int(auth.get("lease_duration") or 0), bool(auth.get("renewable"))


def _reason(exc: Exception) -> str:
    """A short reason without URLs' noise (hvac messages end with the request line)."""
    text = str(exc).replace("\n", " ").strip()
    text = " ".join(text.split())
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection refused or host unreachable"
    if isinstance(exc, requests.exceptions.Timeout):
        return "timed out"
    return (text.split(", on ")[0] or type(exc).__name__)[:200]


class VaultProvider:
    """KV v2 secrets with a TTL cache, token renewal and re-login."""

    def __init__(
        self,
        addr: str,
        auth: VaultAuth,
        *,
        mount: str = "secret",
        path: str = "sutazai",
        cache_ttl_s: float = 300.0,
        renew_before_s: float = 300.0,
        timeout_s: float = 5.0,
        verify: bool | str = True,
        namespace: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.addr = addr.rstrip("/")
        self.auth = auth
        self.mount = mount.strip("/")
        self.path = path.strip("/")
        self.cache_ttl_s = cache_ttl_s
        self.renew_before_s = renew_before_s
        self.clock = clock
        self.label = f"vault:{self.addr}"
        self.client = hvac.Client(url=self.addr, timeout=timeout_s, verify=verify,
                                  namespace=namespace)
        self.lease: Lease | None = None
        self.logins = 0
        self.renewals = 0
        self._cache: dict[str, tuple[float, dict[str, SecretStr]]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the client (it holds the token)
        return f"VaultProvider({self.addr!r}, auth={self.auth.method}, {self.mount}/{self.path})"

    def location(self, name: str) -> tuple[str, str]:
        """``mlflow/password`` -> (``<path>/mlflow``, ``password``); a name without ``/``
        is field ``value`` of ``<path>/<name>``."""
        check_name(name)
        secret, _, field = name.rpartition("/")
        if not secret:
            secret, field = name, "value"
        return (f"{self.path}/{secret}" if self.path else secret), field

    def get(self, name: str) -> SecretStr:
        secret_path, field = self.location(name)
        with self._lock:
            fields = self._fields(name, secret_path)
        if field not in fields:
            raise SecretNotFoundError(
                f"secret {name!r}: {self.mount}/{secret_path} at {self.addr} has no field "
                f"{field!r}; add it with 'bao kv patch -mount={self.mount} {secret_path} "
                f"{field}=...'")
        return fields[field]

    def put(self, name: str, value: str) -> None:
        """Set one field of a KV v2 secret, keeping its other fields; the secret is created
        when missing. Read-modify-write with check-and-set on the version, retried when
        another writer got in between, so concurrent writers never drop each other's fields
        (needs 'read', 'create' and 'update' on ``<mount>/data/<path>/...``)."""
        secret_path, field = self.location(name)
        if not isinstance(value, str) or not value.strip():
            raise SecretError(f"secret {name!r}: refusing to store an empty value")
        with self._lock:
            try:
                self._ensure_token()
                for attempt in (1, 2):
                    try:
                        self._write(name, secret_path, field, value)
                        break
                    except hvac.exceptions.Forbidden as exc:
                        if attempt == 2:
                            raise SecretError(
                                f"Vault at {self.addr} refused to write {self.mount}/"
                                f"{secret_path} ({_reason(exc)}) with a fresh "
                                f"{self.auth.method} login: the token's policy must allow "
                                f"'read', 'create' and 'update' on "
                                f"{self.mount}/data/{secret_path}") from exc
                        self._login()
            except OUTAGES as exc:
                raise SecretUnavailableError(
                    f"secret {name!r} cannot be written: Vault at {self.addr} is unavailable "
                    f"({_reason(exc)}); start or unseal Vault, or fix the route to it "
                    "(SUTAZAI_SECRETS_VAULT_ADDR)") from exc
            finally:
                self._cache.pop(secret_path, None)  # the next read sees the new value

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # --- internals (called with the lock held) -----------------------------------------

    def _fields(self, name: str, secret_path: str) -> dict[str, SecretStr]:
        now = self.clock()
        cached = self._cache.get(secret_path)
        if cached is not None and now - cached[0] < self.cache_ttl_s:
            return cached[1]
        try:
            data = self._read(secret_path)
        except OUTAGES as exc:
            age = (f"the cached value expired {now - cached[0] - self.cache_ttl_s:.0f} s ago"
                   if cached is not None else "no value was cached")
            raise SecretUnavailableError(
                f"secret {name!r} cannot be read: Vault at {self.addr} is unavailable "
                f"({_reason(exc)}) and {age} (cache_ttl_s={self.cache_ttl_s:g}); start or "
                "unseal Vault or fix the route to it (SUTAZAI_SECRETS_VAULT_ADDR), or raise "
                "SUTAZAI_SECRETS_CACHE_TTL_S to ride out longer outages"
            ) from exc
        if data is None:
            self._cache.pop(secret_path, None)
            raise SecretNotFoundError(
                f"secret {name!r}: no secret {self.mount}/{secret_path} at {self.addr}; "
                f"create it with 'bao kv put -mount={self.mount} {secret_path} ...'")
        fields = {key: SecretStr(value if isinstance(value, str) else json.dumps(value))
                  for key, value in data.items()}
        self._cache[secret_path] = (self.clock(), fields)
        return fields

    def _read(self, secret_path: str) -> dict[str, Any] | None:
        """The secret's fields, None when it does not exist; one re-login on a refusal."""
        self._ensure_token()
        for attempt in (1, 2):
            try:
                response = self.client.secrets.kv.v2.read_secret_version(
                    path=secret_path, mount_point=self.mount, raise_on_deleted_version=True)
                return dict(response["data"]["data"])
            except hvac.exceptions.InvalidPath:
                return None
            except hvac.exceptions.Forbidden as exc:
                if attempt == 2:
                    raise SecretError(
                        f"Vault at {self.addr} refused to read {self.mount}/{secret_path} "
                        f"({_reason(exc)}) with a fresh {self.auth.method} login: the "
                        f"token's policy must allow 'read' on {self.mount}/data/{secret_path}"
                    ) from exc
                self._login()  # expired or revoked: log in (or re-read the token) once
        raise AssertionError("unreachable")

    def _write(self, name: str, secret_path: str, field: str, value: str,
               attempts: int = 10) -> None:
        kv = self.client.secrets.kv.v2
        for attempt in range(attempts):
            if attempt:
                time.sleep(random.uniform(0, 0.02 * attempt))  # writers collided: spread out
            try:
                current = kv.read_secret_version(path=secret_path, mount_point=self.mount,
                                                 raise_on_deleted_version=True)
                fields = dict(current["data"]["data"] or {})
                version = int(current["data"]["metadata"]["version"])
            except hvac.exceptions.InvalidPath:  # missing, or its latest version deleted
                deleted = self._deleted_version(secret_path)
                if deleted is None:  # another writer created it since: read it again
                    continue
                fields, version = {}, deleted
            fields[field] = value
            try:
                kv.create_or_update_secret(path=secret_path, secret=fields, cas=version,
                                           mount_point=self.mount)
                return
            except hvac.exceptions.InvalidRequest as exc:
                if "check-and-set" not in str(exc):
                    raise SecretError(f"Vault at {self.addr} refused to write secret "
                                      f"{name!r} ({_reason(exc)})") from exc
                log.debug("secret %s changed while it was written; retrying", name)
        raise SecretError(f"secret {name!r}: {self.mount}/{secret_path} kept changing while "
                          f"it was written ({attempts} tries); try again")

    def _deleted_version(self, secret_path: str) -> int | None:
        """The version a create must name after a read found nothing: 0 when the secret
        does not exist, its current version when that one is deleted or destroyed (a new
        version goes on top), None when a live version appeared since the read."""
        try:
            meta = self.client.secrets.kv.v2.read_secret_metadata(path=secret_path,
                                                                   mount_point=self.mount)
        except (hvac.exceptions.InvalidPath, hvac.exceptions.Forbidden):
            return 0  # missing, or no 'read' on metadata: create-only is the right guess
        current = int(meta["data"].get("current_version") or 0)
        latest = (meta["data"].get("versions") or {}).get(str(current)) or {}
        if current and not (latest.get("deletion_time") or latest.get("destroyed")):
            return None
        return current

    def _ensure_token(self) -> None:
        if self.lease is None:
            self._login()
            return
        expires_at = self.lease.expires_at
        if expires_at is None or expires_at - self.clock() > self.renew_before_s:
            return
        if self.lease.renewable:
            try:
                auth = self.client.auth.token.renew_self()["auth"]
            except hvac.exceptions.VaultError:
                log.info("Vault at %s refused to renew the token; logging in again", self.addr)
            else:
                self.lease = _lease(auth.get("lease_duration"), auth.get("renewable"),
                                    self.clock())
                self.renewals += 1
                log.debug("renewed the Vault token at %s", self.addr)
                renewed = self.lease.expires_at
                if renewed is None or renewed > expires_at + 1:
                    return
                # no longer than before: the token hit its max TTL, so get a new one
        self._login()

    def _login(self) -> None:
        try:
            ttl, renewable = self.auth.login(self.client)
        except OUTAGES:
            raise
        except hvac.exceptions.VaultError as exc:
            raise SecretError(
                f"Vault at {self.addr} refused the {self.auth.method} login ({_reason(exc)}): "
                + _LOGIN_HINTS[self.auth.method]) from exc
        self.lease = _lease(ttl, renewable, self.clock())
        self.logins += 1


_LOGIN_HINTS = {
    "token": "the token is wrong, expired or revoked; put a valid one in "
             "SUTAZAI_SECRETS_VAULT_TOKEN or SUTAZAI_SECRETS_VAULT_TOKEN_FILE",
    "approle": "check the role_id and secret_id (SUTAZAI_SECRETS_VAULT_ROLE_ID[_FILE], "
               "SUTAZAI_SECRETS_VAULT_SECRET_ID[_FILE]); a secret_id may have expired or been "
               "used up (secret_id_num_uses)",
    "kubernetes": "check that the role exists and binds this pod's namespace and service "
                  "account, and that Vault can reach the cluster's TokenReview API",
}


def vault_provider(config: SecretsConfig) -> VaultProvider:
    """The provider a :class:`SecretsConfig` describes (credentials read lazily)."""
    auth: VaultAuth
    if config.vault_auth == "token":
        auth = TokenAuth(credential(config.vault_token, config.vault_token_file,
                                    "the Vault token", "SUTAZAI_SECRETS_VAULT_TOKEN"))
    elif config.vault_auth == "approle":
        auth = AppRoleAuth(
            credential(config.vault_role_id, config.vault_role_id_file, "the AppRole role_id",
                       "SUTAZAI_SECRETS_VAULT_ROLE_ID"),
            credential(config.vault_secret_id, config.vault_secret_id_file,
                       "the AppRole secret_id", "SUTAZAI_SECRETS_VAULT_SECRET_ID"),
            mount=config.vault_auth_mount or "approle")
    else:
        if not config.vault_role:
            raise SecretError("Kubernetes auth needs the Vault role: set "
                              "SUTAZAI_SECRETS_VAULT_ROLE")
        auth = KubernetesAuth(
            config.vault_role,
            credential(None, config.vault_jwt_file, "the service-account token",
                       "SUTAZAI_SECRETS_VAULT_JWT", private=False),
            mount=config.vault_auth_mount or "kubernetes")
    return VaultProvider(
        config.vault_addr, auth, mount=config.vault_mount, path=config.vault_path,
        cache_ttl_s=config.cache_ttl_s, renew_before_s=config.vault_renew_before_s,
        timeout_s=config.vault_timeout_s,
        verify=str(config.vault_ca_cert) if config.vault_ca_cert else True,
        namespace=config.vault_namespace)
