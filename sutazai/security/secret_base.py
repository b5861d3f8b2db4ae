"""The secret interface: names, errors, the provider protocol, and how secrets are configured.

The bottom of :mod:`sutazai.security`: the providers (:mod:`.secrets`) and Vault
(:mod:`.vault`) implement what is declared here, and the factory in :mod:`.secrets` picks
one, so neither implementation needs to import the other.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from sutazai.errors import ConfigError, SutazAIError

if TYPE_CHECKING:
    from sutazai.config import Settings

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
ENV_PREFIX = "SUTAZAI_SECRET_"
DEFAULT_JWT = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")

# The credentials SutazAI reads, by name (a Vault secret per service, one field each).
MLFLOW_USERNAME = "mlflow/username"
MLFLOW_PASSWORD = "mlflow/password"  # pragma: allowlist secret - a name, not a value
MLFLOW_TOKEN = "mlflow/token"  # pragma: allowlist secret - a name, not a value
GRAPH_PASSWORD = "graph/password"  # pragma: allowlist secret - a name, not a value
AIRFLOW_ADMIN_PASSWORD = "airflow/admin-password"  # pragma: allowlist secret - a name
AIRFLOW_JWT_SECRET = "airflow/jwt-secret"  # pragma: allowlist secret - a name, not a value
AIRFLOW_FERNET_KEY = "airflow/fernet-key"  # pragma: allowlist secret - a name, not a value
POSTGRES_PASSWORD = "postgres/password"  # pragma: allowlist secret - a name, not a value
KUBEFLOW_TOKEN = "kubeflow/token"  # pragma: allowlist secret - a name, not a value
SERVING_API_KEYS = "serving/api-keys"  # pragma: allowlist secret - a name, not a value
REPOSITORY_KEY = "repository/key"  # pragma: allowlist secret - a name, not a value
TLS_CERT = "tls/cert"
TLS_KEY = "tls/key"  # pragma: allowlist secret - a name, not a value
TLS_CA = "tls/ca"

#: Settings that held secrets before the provider did; set, they would be silently ignored.
RETIRED = {
    "SUTAZAI_KG_PASSWORD": GRAPH_PASSWORD,
    "SUTAZAI_AIRFLOW_ADMIN_PASSWORD": AIRFLOW_ADMIN_PASSWORD,
    "SUTAZAI_KFP_TOKEN": KUBEFLOW_TOKEN,
}


class SecretError(SutazAIError):
    """A secret cannot be read: access refused, or a secret file is unsafe.

    (Defined here until it moves to :mod:`sutazai.errors`.) Messages name the secret and
    where it was looked for, never its value.
    """


class SecretNotFoundError(SecretError):
    """The provider answered, and it has no secret of that name."""


class SecretUnavailableError(SecretError):
    """The provider cannot be reached and no cached value is fresh enough to serve."""



# --- names and files ---------------------------------------------------------------


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
    """Where secrets come from. ``label`` says where, for audit records and errors.

    ``put`` stores a secret where the provider can (file, Vault); a read-only provider
    (the environment) raises :class:`SecretError` saying what to do instead.
    """

    label: str

    def get(self, name: str) -> SecretStr: ...

    def put(self, name: str, value: str) -> None: ...


def _check_value(name: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"secret {name!r}: refusing to store an empty value")
    return value


class SecretsConfig(BaseSettings):
    """How SutazAI reads its secrets; every field is a ``SUTAZAI_SECRETS_<FIELD>`` variable.

    Credentials for Vault (token, AppRole role_id/secret_id) are *only* read from the
    environment or from 0600 files (``*_file``), never passed in code, so they cannot end
    up in a settings dump, a YAML file in git, or a test.
    """

    model_config = SettingsConfigDict(env_prefix="SUTAZAI_SECRETS_", extra="ignore")

    provider: Literal["env", "file", "vault"] = Field(
        default="file", description="Where secrets are: SUTAZAI_SECRET_<NAME> variables only, "
        "a folder of 0600 files (default <home>/secrets, where generated secrets go too), or "
        "Vault/OpenBao KV v2.")
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
