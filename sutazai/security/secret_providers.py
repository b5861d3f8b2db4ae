"""Secret providers: the environment, a folder of 0600 files, a chain of them, and an audited
wrapper; plus the secrets SutazAI generates for its embedded services.

They implement :class:`~sutazai.security.secret_base.SecretProvider`; Vault, the other
implementation, is in :mod:`sutazai.security.vault`, and :mod:`sutazai.security.secrets`
picks one for the settings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from sutazai.errors import ConfigError
from sutazai.security.secret_base import (
    SecretError,
    SecretNotFoundError,
    SecretProvider,
    SecretUnavailableError,
    _check_value,
    check_name,
    env_var,
    read_private_file,
)

if TYPE_CHECKING:
    from sutazai.security.audit import AuditLog, Result

log = logging.getLogger(__name__)


# --- generated secrets -------------------------------------------------------------------


def secret_path(home: Path, name: str) -> Path:
    """``<home>/secrets/<name>`` for a generated secret (names as :func:`check_name`)."""
    try:
        return home / "secrets" / check_name(name)
    except ConfigError:
        raise ConfigError(f"secret name {name!r} must be letters, digits, dots and dashes, "
                          "segments joined by '/'") from None


def _private_dirs(folder: Path, path: Path) -> None:
    """Create ``path``'s parents down from ``folder``, each mode 0700 (the secrets' folder
    is the owner's alone: a listing already tells which services have credentials)."""
    folder.mkdir(parents=True, exist_ok=True)
    current = folder
    os.chmod(current, 0o700)
    for part in path.parent.relative_to(folder).parts:
        current = current / part
        current.mkdir(exist_ok=True)
        os.chmod(current, 0o700)


def write_new_secret(folder: Path, path: Path, value: str) -> bool:
    """Write ``value`` to ``path`` (0600) unless it exists; True when this call created it.

    The value goes to a unique temporary file first and is hard-linked into place, which
    fails when another process won the race: theirs is kept, so racing creators agree.
    """
    _private_dirs(folder, path)
    if path.exists():
        return False
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")  # unique per caller
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(value)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def generated_secret(home: Path, name: str) -> str:
    """The secret ``name`` under ``<home>/secrets``, created (32 random bytes, URL-safe) on
    first use. Creation is atomic and exclusive, so two processes racing get one value."""
    path = secret_path(home, name)
    write_new_secret(home / "secrets", path, secrets.token_urlsafe(32))
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{path} is readable by others (mode {mode:o}): run "
                          f"'chmod 600 {path}'")
    value = path.read_text(encoding="utf-8").strip()
    if not value:
        raise ConfigError(f"{path} is empty: delete it to generate a new secret (only where "
                          "nothing uses the old one yet), or set the matching secret")
    return value


# --- providers -------------------------------------------------------------------------


class EnvProvider:
    """``SUTAZAI_SECRET_<NAME>`` variables: containers, CI and systemd ``Environment=``."""

    label = "env"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def get(self, name: str) -> SecretStr:
        variable = env_var(name)
        value = self.environ.get(variable, "")
        if not value:
            raise SecretNotFoundError(f"secret {name!r}: {variable} is not set")
        return SecretStr(value)

    def put(self, name: str, value: str) -> None:
        raise SecretError(f"secret {name!r} cannot be stored in the environment: set "
                          f"{env_var(name)} where SutazAI starts, or use a writable provider "
                          "(SUTAZAI_SECRETS_PROVIDER=file or vault)")


class FileProvider:
    """A folder with one file per secret (``<folder>/mlflow/password``), each mode 0600 or
    stricter: a Kubernetes secret volume, Docker/Compose secrets, or files an agent writes.
    Files are read on every ``get``, so a rotated file is picked up at once."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.label = f"file:{self.folder}"

    def get(self, name: str) -> SecretStr:
        path = self.folder / check_name(name)
        try:
            value = read_private_file(path, f"secret {name!r}")
        except FileNotFoundError:
            raise SecretNotFoundError(f"secret {name!r}: no file {path}") from None
        if not value:
            raise SecretNotFoundError(f"secret {name!r}: {path} is empty")
        return SecretStr(value)

    def put(self, name: str, value: str) -> None:
        """Replace the file atomically (a reader sees the old value or the new, never half
        of one), mode 0600 in 0700 folders."""
        from sutazai.repository.fsutil import atomic_write_text  # mkstemp: mode 0600

        path = self.folder / check_name(name)
        _check_value(name, value)
        try:
            _private_dirs(self.folder, path)
            atomic_write_text(path, value)
        except OSError as exc:
            raise SecretError(f"secret {name!r}: cannot write {path} ({exc.strerror}); the "
                              f"folder {self.folder} must be writable by this user") from exc


class ChainProvider:
    """The first provider that has the secret wins (e.g. env overrides, then Vault).

    A provider that lacks the secret or cannot be reached passes to the next; a refusal
    (bad credentials, unsafe file) stops the chain, because falling through would hide a
    misconfiguration. When none has it, the outage (if any) is what is reported.
    """

    def __init__(self, providers: Sequence[SecretProvider]) -> None:
        if not providers:
            raise ConfigError("a chain of secret providers needs at least one provider")
        self.providers = list(providers)
        self.label = ",".join(p.label for p in self.providers)

    def get(self, name: str) -> SecretStr:
        missing: list[str] = []
        outage: SecretUnavailableError | None = None
        for provider in self.providers:
            try:
                return provider.get(name)
            except SecretUnavailableError as exc:
                outage = outage or exc
            except SecretNotFoundError as exc:
                missing.append(str(exc))
        if outage is not None:
            raise outage
        raise SecretNotFoundError(f"secret {name!r} is in none of {self.label}: "
                                  + "; ".join(missing))

    def put(self, name: str, value: str) -> None:
        """Into the last provider: the backing store (file, Vault), not an override in
        front of it such as the environment."""
        self.providers[-1].put(name, value)


class AuditedProvider:
    """Records every read and write (name, provider, result; never the value) in the audit
    log.

    If the record cannot be written the value is not returned (:class:`AuditError`): an
    unaudited secret read is what an audit trail exists to rule out.
    """

    def __init__(self, inner: SecretProvider, log: AuditLog, actor: str | None = None) -> None:
        self.inner = inner
        self.audit_log = log
        self.actor = actor
        self.label = inner.label

    @contextlib.contextmanager
    def _audited(self, action: str, name: str) -> Iterator[None]:
        """Record ``action`` on ``name`` with its outcome (the error's type on failure).

        A secret that is not there is ``absent``, not an error: optional ones (an MLflow
        token where a password is used) are looked up on every start, and an audit
        trail full of errors that are none hides the real ones."""
        try:
            yield
        except SecretError as exc:
            result: Result = "absent" if isinstance(exc, SecretNotFoundError) else "error"
            self.audit_log.record(action, name, actor=self.actor, result=result,
                                  details={"provider": self.label,
                                           "error": type(exc).__name__})
            raise
        self.audit_log.record(action, name, actor=self.actor, details={"provider": self.label})

    def get(self, name: str) -> SecretStr:
        with self._audited("secret.read", name):
            value = self.inner.get(name)
        log.debug("secret %s read from %s", name, self.label)
        return value

    def put(self, name: str, value: str) -> None:
        check_name(name)
        with self._audited("secret.write", name):
            self.inner.put(name, value)
        log.info("secret %s written to %s", name, self.label)
