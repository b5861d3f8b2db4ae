"""Secrets SutazAI generates for its embedded services (private, stable, never replaced),
and the env / file providers and their configuration (Vault: tests/test_vault.py)."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from secrets import token_urlsafe

import pytest
from pydantic import SecretStr

from sutazai.audit import open_audit_log
from sutazai.config import Settings
from sutazai.errors import ConfigError
from sutazai.secrets import (
    AuditedProvider,
    ChainProvider,
    EnvProvider,
    FileProvider,
    SecretError,
    SecretNotFoundError,
    SecretProvider,
    SecretsConfig,
    SecretUnavailableError,
    credential,
    env_var,
    generated_secret,
    provider_from,
    secret_value,
    secrets_config,
)


def test_a_generated_secret_is_private_and_stable(tmp_path: Path) -> None:
    with ThreadPoolExecutor(4) as pool:  # racing creators all get the one value
        values = set(pool.map(lambda _: generated_secret(tmp_path, "airflow-admin"), range(8)))
    [value] = values
    path = tmp_path / "secrets" / "airflow-admin"
    assert len(value) >= 32 and path.read_text() == value
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_the_setting_wins_over_the_generated_secret(tmp_path: Path) -> None:
    assert secret_value(SecretStr("from-vault"), tmp_path, "x") == "from-vault"
    assert not (tmp_path / "secrets" / "x").exists()
    assert secret_value(None, tmp_path, "x") == generated_secret(tmp_path, "x")


def test_a_readable_or_empty_secret_file_is_refused(tmp_path: Path) -> None:
    generated_secret(tmp_path, "key")
    path = tmp_path / "secrets" / "key"
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others.*chmod 600"):
        generated_secret(tmp_path, "key")
    path.chmod(0o600)
    path.write_text("")
    with pytest.raises(ConfigError, match="is empty: delete it"):
        generated_secret(tmp_path, "key")
    with pytest.raises(ConfigError, match="letters, digits"):
        generated_secret(tmp_path, "../escape")


# --- providers -------------------------------------------------------------------------


def fake_value() -> str:
    return "v-" + token_urlsafe(24)  # made at run time: no secret-looking literal in git


def test_env_provider_maps_names_to_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    value = fake_value()
    monkeypatch.setenv("SUTAZAI_SECRET_SERVING_API_KEYS", value)
    assert env_var("serving/api-keys") == "SUTAZAI_SECRET_SERVING_API_KEYS"
    assert EnvProvider().get("serving/api-keys").get_secret_value() == value
    with pytest.raises(SecretNotFoundError, match="SUTAZAI_SECRET_KUBEFLOW_TOKEN is not set"):
        EnvProvider().get("kubeflow/token")
    for bad in ("../etc/passwd", "a//b", "/abs", "mlflow/.hidden", ""):
        with pytest.raises(ConfigError, match="secret name"):
            EnvProvider().get(bad)


def test_file_provider_refuses_files_others_can_read(tmp_path: Path) -> None:
    value = fake_value()
    path = tmp_path / "mlflow" / "password"
    path.parent.mkdir()
    path.write_text(value + "\n")
    path.chmod(0o640)
    provider = FileProvider(tmp_path)
    with pytest.raises(SecretError, match=rf"mode 640.*chmod 600 {path}") as caught:
        provider.get("mlflow/password")
    assert value not in str(caught.value)
    path.chmod(0o600)
    assert provider.get("mlflow/password").get_secret_value() == value
    path.chmod(0o400)
    assert provider.get("mlflow/password").get_secret_value() == value
    with pytest.raises(SecretNotFoundError, match="no file"):
        provider.get("graph/password")


def test_chain_env_overrides_and_the_outage_is_reported(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from_file, from_env = fake_value(), fake_value()
    (tmp_path / "airflow").mkdir()
    (tmp_path / "airflow" / "admin").write_text(from_file)
    (tmp_path / "airflow" / "admin").chmod(0o600)
    chain = ChainProvider([EnvProvider(), FileProvider(tmp_path)])
    assert chain.get("airflow/admin").get_secret_value() == from_file
    monkeypatch.setenv("SUTAZAI_SECRET_AIRFLOW_ADMIN", from_env)
    assert chain.get("airflow/admin").get_secret_value() == from_env
    with pytest.raises(SecretNotFoundError, match="in none of env,file:"):
        chain.get("graph/password")

    class Down:
        label = "vault:http://10.0.0.1:8200"

        def get(self, name: str) -> SecretStr:
            raise SecretUnavailableError(f"secret {name!r}: vault down")

    with pytest.raises(SecretUnavailableError, match="vault down"):
        ChainProvider([EnvProvider(), Down()]).get("graph/password")


def test_provider_from_settings_audits_reads_by_name_only(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    value = fake_value()
    monkeypatch.setenv("SUTAZAI_SECRETS_PROVIDER", "file")
    folder = settings.home / "secrets" / "graph"
    folder.mkdir(parents=True)
    (folder / "password").write_text(value)
    (folder / "password").chmod(0o600)
    provider = provider_from(settings, actor="role:kg")
    assert isinstance(provider, SecretProvider) and isinstance(provider, AuditedProvider)
    assert provider.get("graph/password").get_secret_value() == value
    with pytest.raises(SecretNotFoundError):
        provider.get("mlflow/password")
    log = open_audit_log(settings)
    records = log.records()
    assert [(r.action, r.target, r.result, r.actor) for r in records] == [
        ("secret.read", "graph/password", "ok", "role:kg"),
        ("secret.read", "mlflow/password", "error", "role:kg")]
    assert records[0].details["provider"].startswith("env,file:")
    assert value not in log.path.read_text() and log.verify().ok


def test_config_reads_credentials_from_the_environment_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = fake_value()
    with pytest.raises(ConfigError, match="cannot be passed in code"):
        SecretsConfig(vault_token=token)
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_TOKEN", token)
    monkeypatch.setenv("SUTAZAI_SECRETS_CACHE_TTL_S", "12")
    config = SecretsConfig(provider="vault", vault_addr="http://vault:8200")
    assert config.vault_token is not None and config.vault_token.get_secret_value() == token
    assert config.cache_ttl_s == 12 and config.vault_addr == "http://vault:8200"
    assert token not in repr(config) and token not in config.model_dump_json()
    file = tmp_path / "token"
    file.write_text(token)
    file.chmod(0o644)
    with pytest.raises(SecretError, match=f"chmod 600 {file}"):
        credential(None, file, "the Vault token", "SUTAZAI_SECRETS_VAULT_TOKEN")()
    with pytest.raises(SecretError, match="not configured: set SUTAZAI_SECRETS_VAULT_ROLE_ID"):
        credential(None, None, "the role_id", "SUTAZAI_SECRETS_VAULT_ROLE_ID")()
    with pytest.raises(ConfigError, match="needs a folder"):
        provider_from(SecretsConfig(provider="file"), audit_log=None)


def test_settings_fields_named_secrets_star_configure_the_provider(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What provider_from does once Settings grows ``secrets_*`` fields."""

    class WithSecrets(Settings):
        secrets_provider: str = "env"
        secrets_file_dir: Path | None = None
        secrets_vault_addr: str = "http://127.0.0.1:8200"

    monkeypatch.setenv("VAULT_ADDR", "http://vault.internal:8200")
    settings = WithSecrets(home=tmp_path, secrets_provider="file", secrets_file_dir=tmp_path)
    config = secrets_config(settings)
    assert config.provider == "file" and config.file_dir == tmp_path
    assert config.vault_addr == "http://vault.internal:8200"  # a default does not override
    provider = provider_from(settings)
    assert provider.label == f"env,file:{tmp_path}"
