"""Secrets SutazAI makes for itself on one machine.

An embedded service that needs a password (the Airflow UI's admin, the embedded graph
store) gets one from the settings when the operator set it, and otherwise from a file
under ``<home>/secrets/`` that SutazAI generates once: random, mode 0600, never logged.
Production points the settings at its own secrets instead (Vault, in a later stage).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import SecretStr

from sutazai.errors import ConfigError


def secret_path(home: Path, name: str) -> Path:
    if not name.replace("-", "").replace(".", "").isalnum() or name.startswith("."):
        raise ConfigError(f"secret name {name!r} must be letters, digits, dots and dashes")
    return home / "secrets" / name


def generated_secret(home: Path, name: str) -> str:
    """The secret ``name`` under ``home``, created (32 random bytes, URL-safe) on first use.

    Creation is atomic and exclusive, so two processes racing end up with the same value.
    """
    path = secret_path(home, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if not path.exists():
        value = secrets.token_urlsafe(32)
        tmp = path.with_name(f".{name}.{secrets.token_hex(8)}.tmp")  # unique per caller
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
        try:
            os.link(tmp, path)  # fails if another process won the race: keep theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{path} is readable by others (mode {mode:o}): run "
                          f"'chmod 600 {path}'")
    value = path.read_text().strip()
    if not value:
        raise ConfigError(f"{path} is empty: delete it to generate a new secret (only where "
                          "nothing uses the old one yet), or set the matching setting")
    return value


def secret_value(configured: SecretStr | None, home: Path, name: str) -> str:
    """The operator's secret when set, else the generated one."""
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value()
    return generated_secret(home, name)
