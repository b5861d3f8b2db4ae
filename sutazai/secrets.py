"""Where SutazAI's secrets come from: generated locally, or read from a provider.

Two layers live here.

*Generated secrets.* An embedded service that needs a password (the Airflow UI's admin,
the embedded graph store) gets one from the settings when the operator set it, and
otherwise from a file under ``<home>/secrets/`` that SutazAI generates once: random,
mode 0600, never logged (:func:`generated_secret`, :func:`secret_value`).

*Providers.* Secrets an operator owns (``mlflow/password``, ``graph/password``,
``airflow/admin``, ``serving/api-keys``, ``kubeflow/token``) are read through one
:class:`SecretProvider` interface from the environment (``SUTAZAI_SECRET_<NAME>``), a
folder of 0600 files (a Kubernetes secret volume, a Docker secret), or Vault/OpenBao
(:mod:`sutazai.vault`), chosen by :class:`SecretsConfig` (``SUTAZAI_SECRETS_*``) so a
deployment changes settings, never code. Values are :class:`pydantic.SecretStr`, so a log
line, an exception or an MLflow param shows ``**********``; every read is recorded in the
audit log by name only (:mod:`sutazai.audit`).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from sutazai.errors import ConfigError, SutazAIError

if TYPE_CHECKING:
    from sutazai.audit import AuditLog
    from sutazai.config import Settings


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


# --- providers -------------------------------------------------------------------------

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
ENV_PREFIX = "SUTAZAI_SECRET_"
DEFAULT_JWT = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class SecretError(SutazAIError):
    """A secret cannot be read: access refused, or a secret file is unsafe.

    (Defined here until it moves to :mod:`sutazai.errors`.) Messages name the secret and
    where it was looked for, never its value.
    """


class SecretNotFoundError(SecretError):
    """The provider answered, and it has no secret of that name."""


class SecretUnavailableError(SecretError):
    """The provider cannot be reached and no cached value is fresh enough to serve."""


def check_name(name: str) -> str:
    """Names are path-like (``mlflow/password``): letters, digits, ``.``, ``_``, ``-``,
    segments joined by ``/``, none starting with a dot (no ``..`` escapes from a folder)."""
    if not NAME.fullmatch(name):
        raise ConfigError(f"secret name {name!r} is invalid: use segments of letters, digits, "
                          "'.', '_' and '-' joined by '/', e.g. 'mlflow/password'")
    return name


def env_var(name: str) -> str:
    """``mlflow/password`` -> ``SUTAZAI_SECRET_MLFLOW_PASSWORD`` (``/ - .`` become ``_``)."""
    return ENV_PREFIX + re.sub(r"[/.-]", "_", check_name(name)).upper()


def read_private_file(path: Path, what: str) -> str:
    """The stripped text of a secret file that only its owner can read.

    A file readable by the group or others is refused (not silently used): another local
    user may already have read it, and the operator should know.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)  # follows links: Kubernetes' ..data
    except FileNotFoundError:
        raise  # the caller knows whether a missing file is "not found" or misconfigured
    except OSError as exc:
        raise SecretError(f"{what}: cannot read {path} ({exc.strerror})") from exc
    if mode & 0o077:
        raise SecretError(f"{what}: {path} is readable by group or others (mode {mode:o}); "
                          f"run 'chmod 600 {path}' (Kubernetes: defaultMode 0400/0600)")
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretError(f"{what}: cannot read {path} ({exc.strerror})") from exc


@runtime_checkable
class SecretProvider(Protocol):
    """Where secrets come from. ``label`` says where, for audit records and errors."""

    label: str

    def get(self, name: str) -> SecretStr: ...


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


class AuditedProvider:
    """Records every read (name, provider, result; never the value) in the audit log.

    If the record cannot be written the value is not returned (:class:`AuditError`): an
    unaudited secret read is what an audit trail exists to rule out.
    """

    def __init__(self, inner: SecretProvider, log: AuditLog, actor: str | None = None) -> None:
        self.inner = inner
        self.audit_log = log
        self.actor = actor
        self.label = inner.label

    def get(self, name: str) -> SecretStr:
        try:
            value = self.inner.get(name)
        except SecretError as exc:
            self.audit_log.record("secret.read", name, actor=self.actor, result="error",
                                  details={"provider": self.label,
                                           "error": type(exc).__name__})
            raise
        self.audit_log.record("secret.read", name, actor=self.actor,
                              details={"provider": self.label})
        log.debug("secret %s read from %s", name, self.label)
        return value


class SecretsConfig(BaseSettings):
    """How SutazAI reads its secrets; every field is a ``SUTAZAI_SECRETS_<FIELD>`` variable.

    Credentials for Vault (token, AppRole role_id/secret_id) are *only* read from the
    environment or from 0600 files (``*_file``), never passed in code, so they cannot end
    up in a settings dump, a YAML file in git, or a test.
    """

    model_config = SettingsConfigDict(env_prefix="SUTAZAI_SECRETS_", extra="ignore")

    provider: Literal["env", "file", "vault"] = "env"
    env_first: bool = Field(default=True, description="With file or vault, a "
                            "SUTAZAI_SECRET_<NAME> variable overrides the provider.")
    file_dir: Path | None = Field(default=None, description="Secret files; default "
                                  "<home>/secrets.")
    vault_addr: str = Field(
        default="http://127.0.0.1:8200",
        validation_alias=AliasChoices("SUTAZAI_SECRETS_VAULT_ADDR", "VAULT_ADDR", "vault_addr"))
    vault_auth: Literal["token", "approle", "kubernetes"] = "token"
    vault_auth_mount: str | None = Field(default=None, description="Where the auth method "
                                         "is mounted; default its name (approle, kubernetes).")
    vault_role: str | None = Field(default=None, description="Kubernetes auth role.")
    vault_mount: str = Field(default="secret", description="The KV v2 mount.")
    vault_path: str = Field(default="sutazai", description="Prefix of SutazAI's secrets: "
                            "'mlflow/password' is field 'password' of <vault_path>/mlflow.")
    vault_namespace: str | None = None
    vault_ca_cert: Path | None = Field(default=None, description="CA bundle for https.")
    vault_timeout_s: float = Field(default=5.0, gt=0)
    vault_renew_before_s: float = Field(default=300.0, ge=0, description="Renew the token "
                                        "(renew-self) when it expires sooner than this.")
    vault_jwt_file: Path = Field(default=DEFAULT_JWT, description="Service-account token "
                                 "for Kubernetes auth.")
    cache_ttl_s: float = Field(default=300.0, ge=0, description="How long a value read from "
                               "Vault is served without asking again (and through outages).")
    audit: bool = Field(default=True, description="Record every read in the audit log.")

    # credentials: environment or files only (no field-name alias: not settable in code)
    vault_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SUTAZAI_SECRETS_VAULT_TOKEN", "VAULT_TOKEN"))
    vault_token_file: Path | None = None
    vault_role_id: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SUTAZAI_SECRETS_VAULT_ROLE_ID"))
    vault_role_id_file: Path | None = None
    vault_secret_id: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SUTAZAI_SECRETS_VAULT_SECRET_ID"))
    vault_secret_id_file: Path | None = None

    def __init__(self, **values: Any) -> None:
        given = sorted(name for name in CREDENTIALS
                       if any(key.lower().endswith(name) for key in values))
        if given:
            raise ConfigError(
                f"{', '.join(given)} cannot be passed in code: set "
                + " or ".join(f"SUTAZAI_SECRETS_{name.upper()}[_FILE]" for name in given))
        super().__init__(**values)


CREDENTIALS = ("vault_token", "vault_role_id", "vault_secret_id")


def credential(value: SecretStr | None, file: Path | None, what: str, variable: str,
               private: bool = True) -> Callable[[], SecretStr]:
    """A function that reads one credential when called: the file again each time (an agent
    may rotate it), else the environment's value. ``private=False`` skips the 0600 check,
    for Kubernetes' service-account token, which the kubelet mounts 0644 by default."""

    def read() -> SecretStr:
        if file is not None:
            try:
                text = (read_private_file(file, what) if private
                        else file.read_text(encoding="utf-8").strip())
            except FileNotFoundError:
                raise SecretError(f"{what}: {file} does not exist; create it (mode 600) or "
                                  f"point {variable}_FILE elsewhere") from None
            except OSError as exc:
                raise SecretError(f"{what}: cannot read {file} ({exc.strerror})") from exc
            if text:
                return SecretStr(text)
        if value is not None and value.get_secret_value():
            return value
        raise SecretError(f"{what} is not configured: set {variable} or {variable}_FILE")

    return read


def secrets_config(source: SecretsConfig | Settings | None = None) -> SecretsConfig:
    """The config itself, or one built from ``Settings.secrets_<field>`` (when Settings has
    such fields) on top of the ``SUTAZAI_SECRETS_*`` environment."""
    if isinstance(source, SecretsConfig):
        return source
    overrides: dict[str, Any] = {}
    if source is not None:
        given = source.model_fields_set  # set explicitly or from env/YAML: not defaults,
        for field in SecretsConfig.model_fields:  # which would hide VAULT_ADDR and friends
            if field not in CREDENTIALS and f"secrets_{field}" in given:
                overrides[field] = getattr(source, f"secrets_{field}")
    return SecretsConfig(**overrides)


def provider_from(source: SecretsConfig | Settings | None = None, *,
                  home: Path | None = None, audit_log: AuditLog | None = None,
                  actor: str | None = None) -> SecretProvider:
    """The provider the configuration asks for, audited.

    ``home`` (default ``settings.home``) places the default secret folder and audit log;
    ``audit_log`` overrides the latter.
    """
    from sutazai.audit import AuditLog, open_audit_log

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
        from sutazai.vault import vault_provider

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
