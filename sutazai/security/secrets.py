"""Where SutazAI's secrets come from: one provider interface, one entry point.

Every credential SutazAI uses is read with :func:`read_secret` (or :func:`optional_secret`)
through the provider :func:`settings_provider` returns for the settings: the environment
(``SUTAZAI_SECRET_<NAME>``), a folder of 0600 files (``<home>/secrets`` by default, or a
Kubernetes secret volume, a Docker secret), or Vault/OpenBao (:mod:`sutazai.security.vault`), chosen
by :class:`SecretsConfig` (``SUTAZAI_SECRETS_*``) so a deployment changes settings, never
code. The embedded default is the file folder with the environment in front of it, so an
operator overrides any secret with one variable and nothing else needs configuring.

Embedded services (the graph store, the Airflow UI's admin) must work on a fresh home
without anyone choosing a password: ``read_secret(..., generate=True)`` creates a random
value in the file folder when no provider has one, which makes generated secrets ordinary
provider secrets (the next read finds them like any other).

Values are :class:`pydantic.SecretStr`, so a log line, an exception or an MLflow param shows
``**********``; every read and write is recorded in the audit log by name only
(:mod:`sutazai.security.audit`). Providers that can be written (file, Vault) take ``put``, which
``sutazai keys`` uses to keep the API keys.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from sutazai.errors import ConfigError
from sutazai.security.secret_base import (
    AIRFLOW_ADMIN_PASSWORD,
    AIRFLOW_FERNET_KEY,
    AIRFLOW_JWT_SECRET,
    CREDENTIALS,
    DEFAULT_JWT,
    ENV_PREFIX,
    GRAPH_PASSWORD,
    KUBEFLOW_TOKEN,
    MLFLOW_PASSWORD,
    MLFLOW_TOKEN,
    MLFLOW_USERNAME,
    NAME,
    REPOSITORY_KEY,
    RETIRED,
    SERVING_API_KEYS,
    TLS_CA,
    TLS_CERT,
    TLS_KEY,
    SecretError,
    SecretNotFoundError,
    SecretProvider,
    SecretsConfig,
    SecretUnavailableError,
    check_name,
    credential,
    env_var,
    read_private_file,
    secrets_config,
)
from sutazai.security.secret_providers import (
    AuditedProvider,
    ChainProvider,
    EnvProvider,
    FileProvider,
    generated_secret,
    secret_path,
    write_new_secret,
)

if TYPE_CHECKING:
    from sutazai.config import Settings
    from sutazai.security.audit import AuditLog

__all__ = [
    "AIRFLOW_ADMIN_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_JWT_SECRET",
    "CREDENTIALS",
    "DEFAULT_JWT",
    "ENV_PREFIX",
    "GRAPH_PASSWORD",
    "KUBEFLOW_TOKEN",
    "MLFLOW_PASSWORD",
    "MLFLOW_TOKEN",
    "MLFLOW_USERNAME",
    "NAME",
    "REPOSITORY_KEY",
    "RETIRED",
    "SERVING_API_KEYS",
    "TLS_CA",
    "TLS_CERT",
    "TLS_KEY",
    "AuditedProvider",
    "ChainProvider",
    "EnvProvider",
    "FileProvider",
    "SecretError",
    "SecretNotFoundError",
    "SecretProvider",
    "SecretUnavailableError",
    "SecretsConfig",
    "check_name",
    "credential",
    "env_var",
    "export_mlflow_credentials",
    "generated_secret",
    "optional_secret",
    "provider_from",
    "read_private_file",
    "read_secret",
    "secret_folder",
    "secret_path",
    "secrets_config",
    "settings_provider",
]

log = logging.getLogger(__name__)

def provider_from(source: SecretsConfig | Settings | None = None, *,
                  home: Path | None = None, audit_log: AuditLog | None = None,
                  actor: str | None = None) -> SecretProvider:
    """The provider the configuration asks for, audited.

    ``home`` (default ``settings.home``) places the default secret folder and audit log;
    ``audit_log`` overrides the latter.
    """
    from sutazai.security.audit import AuditLog, open_audit_log

    config = secrets_config(source)
    settings = None if source is None or isinstance(source, SecretsConfig) else source
    home = home or (settings.home if settings is not None else None)
    chosen: SecretProvider
    if config.provider == "env":
        chosen = EnvProvider()
    elif config.provider == "file":
        folder = config.file_dir or (home / "secrets" if home else None)
        if folder is None:
            raise ConfigError("the file secret provider needs a folder: set "
                              "SUTAZAI_SECRETS_FILE_DIR")
        chosen = FileProvider(folder)
    else:
        from sutazai.security.vault import vault_provider

        chosen = vault_provider(config)
    if config.provider != "env" and config.env_first:
        chosen = ChainProvider([EnvProvider(), chosen])
    if not config.audit:
        return chosen
    if audit_log is None:
        if settings is not None:
            audit_log = open_audit_log(settings)
        elif home is not None:
            audit_log = AuditLog(home / "audit" / "audit.jsonl")
        else:
            raise ConfigError("secret reads are audited: give provider_from the settings or "
                              "a home folder (or set SUTAZAI_SECRETS_AUDIT=false)")
    return AuditedProvider(chosen, audit_log, actor)


# --- the entry point -------------------------------------------------------------------

_PROVIDERS: dict[tuple[str, ...], SecretProvider] = {}
_PROVIDERS_LOCK = threading.Lock()


def _credentials_digest(config: SecretsConfig) -> str:
    """Tells configs apart by their credentials without keeping them in a key: a token
    changed in the environment must give a provider that uses the new one."""
    digest = hashlib.sha256()
    for field in CREDENTIALS:
        value = getattr(config, field)
        digest.update(b"\0" + (value.get_secret_value().encode() if value else b"-"))
    return digest.hexdigest()


def settings_provider(settings: Settings) -> SecretProvider:
    """The audited provider for ``settings``, one per (home, audit log, secrets config) in
    this process, so Vault's token and TTL cache are shared by every reader instead of each
    call logging in and asking again."""
    from sutazai.security.audit import audit_path

    config = secrets_config(settings)
    key = (str(settings.home), str(audit_path(settings)),
           str(getattr(settings, "audit_sink", None)), config.model_dump_json(),
           _credentials_digest(config))
    with _PROVIDERS_LOCK:
        provider = _PROVIDERS.get(key)
        if provider is None:
            provider = _PROVIDERS[key] = provider_from(config, home=settings.home,
                                                       audit_log=_audit_log(settings, config))
    return provider


def _audit_log(settings: Settings, config: SecretsConfig) -> AuditLog | None:
    from sutazai.security.audit import open_audit_log

    return open_audit_log(settings) if config.audit else None


def secret_folder(settings: Settings) -> Path:
    """The file provider's folder (``SUTAZAI_SECRETS_FILE_DIR``, default ``<home>/secrets``),
    where generated secrets are kept whatever the provider."""
    config = secrets_config(settings)
    return config.file_dir or settings.home / "secrets"


def _refuse_retired(name: str) -> None:
    for variable, secret in RETIRED.items():
        if secret == name and os.environ.get(variable):
            raise ConfigError(
                f"{variable} is no longer read: secrets come from the secret provider. Set "
                f"{env_var(name)} instead (or put {name!r} in the provider) and unset "
                f"{variable}")


def read_secret(settings: Settings, name: str, *, generate: bool = False,
                legacy: str | None = None) -> SecretStr:
    """The secret ``name`` from the settings' provider (:func:`settings_provider`).

    ``generate=True`` is for SutazAI's embedded services only: when no provider has the
    secret, a random one is created (once, 0600, race-safe) in :func:`secret_folder` and
    returned; ``legacy`` names the flat file an older SutazAI generated there
    (``graph.password``), which is adopted instead so existing homes keep their password.
    Raises :class:`SecretNotFoundError` (or an outage/refusal) otherwise.
    """
    _refuse_retired(name)
    provider = settings_provider(settings)
    try:
        return provider.get(name)
    except SecretNotFoundError:
        if not generate:
            raise
    folder = secret_folder(settings)
    path = folder / check_name(name)
    old = folder / legacy if legacy else None
    try:
        if old is not None and old.is_file() and not path.exists():
            value, how = read_private_file(old, f"secret {name!r}"), "adopted"
        else:
            value, how = secrets.token_urlsafe(32), "generated"
        created = write_new_secret(folder, path, value)
    except OSError as exc:
        raise SecretError(f"secret {name!r}: cannot create {path} ({exc.strerror}); make "
                          f"{folder} writable or provide the secret ({env_var(name)})"
                          ) from exc
    if isinstance(provider, AuditedProvider):  # the provider did not see this file's read
        provider.audit_log.record("secret.write" if created else "secret.read", name,
                                  actor=provider.actor,
                                  details={"provider": f"file:{folder}",
                                           **({how: True} if created else {})})
    if created:
        log.info("secret %s %s in %s", name, how, folder)
    stored = read_private_file(path, f"secret {name!r}")
    if not stored:
        raise SecretError(f"secret {name!r}: {path} is empty; delete it to generate a new "
                          f"one (only where nothing uses the old one yet) or set {env_var(name)}")
    return SecretStr(stored)


def optional_secret(settings: Settings, name: str) -> SecretStr | None:
    """The secret, or None when no provider has it (a server that needs no password)."""
    try:
        return read_secret(settings, name)
    except SecretNotFoundError:
        return None


def export_mlflow_credentials(tracking_uri: str, settings: Settings | None = None) -> list[str]:
    """Put the MLflow server's credentials where MLflow's client reads them.

    MLflow takes HTTP credentials only from ``MLFLOW_TRACKING_TOKEN`` or
    ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` in the environment. For an
    http(s) tracking URI they are set from the secrets ``mlflow/token``,
    ``mlflow/username`` and ``mlflow/password`` when the provider has them (variables an
    operator set directly are otherwise left alone); a local store needs none, and nothing
    is read. Returns the names of the variables set (never values).
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return []
    if settings is None:
        from sutazai.config import load_settings

        settings = load_settings()
    exported: list[str] = []
    token = optional_secret(settings, MLFLOW_TOKEN)
    if token is not None:
        os.environ["MLFLOW_TRACKING_TOKEN"] = token.get_secret_value()
        exported.append("MLFLOW_TRACKING_TOKEN")
    username = optional_secret(settings, MLFLOW_USERNAME)
    password = optional_secret(settings, MLFLOW_PASSWORD)
    if username is not None and password is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = username.get_secret_value()
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password.get_secret_value()
        exported += ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]
    elif (username is None) != (password is None):
        raise ConfigError(f"MLflow basic auth needs both {MLFLOW_USERNAME!r} and "
                          f"{MLFLOW_PASSWORD!r}; only one is set in the secret provider")
    if exported:
        log.debug("MLflow credentials from the secret provider: %s", ", ".join(exported))
    return exported
