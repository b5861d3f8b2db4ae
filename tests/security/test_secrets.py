"""Secrets SutazAI generates for its embedded services (private, stable, never replaced),
the env / file providers, their configuration, writes, and the one entry point
(``settings_provider`` / ``read_secret``); Vault: tests/security/test_vault.py."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from secrets import token_urlsafe

import pytest
from pydantic import SecretStr

from sutazai.config import Settings
from sutazai.errors import ConfigError
from sutazai.security.audit import open_audit_log
from sutazai.security.secrets import (
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
    export_mlflow_credentials,
    generated_secret,
    optional_secret,
    provider_from,
    read_secret,
    secrets_config,
    settings_provider,
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
        ("secret.read", "mlflow/password", "absent", "role:kg")]
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


# --- the entry point: settings_provider, read_secret, put ---------------------------------


def modes(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_embedded_secrets_are_generated_once_into_the_file_provider(settings: Settings) -> None:
    """The default provider is the file folder behind the environment, and an embedded
    service's generated password is an ordinary secret there: the next read finds it."""
    assert secrets_config(settings).provider == "file"
    with pytest.raises(SecretNotFoundError):
        read_secret(settings, "graph/password")  # without generate: nothing is created
    assert not (settings.home / "secrets" / "graph").exists()
    with ThreadPoolExecutor(4) as pool:  # racing first readers agree on one value
        values = {v.get_secret_value() for v in pool.map(
            lambda _: read_secret(settings, "graph/password", generate=True), range(6))}
    [value] = values
    path = settings.home / "secrets" / "graph" / "password"
    assert path.read_text() == value and len(value) >= 32
    assert modes(path) == 0o600 and modes(path.parent) == 0o700
    assert modes(settings.home / "secrets") == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["password"]  # no temp files
    assert settings_provider(settings).get("graph/password").get_secret_value() == value
    log = open_audit_log(settings)
    actions = [(r.action, r.result) for r in log.records()]
    assert actions.count(("secret.write", "ok")) == 1  # generated once, by one thread
    assert ("secret.read", "ok") in actions and value not in log.path.read_text()


def test_the_environment_overrides_a_generated_secret(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    generated = read_secret(settings, "airflow/admin-password", generate=True)
    chosen = fake_value()
    monkeypatch.setenv("SUTAZAI_SECRET_AIRFLOW_ADMIN_PASSWORD", chosen)
    assert read_secret(settings, "airflow/admin-password",
                       generate=True).get_secret_value() == chosen
    monkeypatch.delenv("SUTAZAI_SECRET_AIRFLOW_ADMIN_PASSWORD")
    assert read_secret(settings, "airflow/admin-password") == generated


def test_an_older_homes_flat_secret_file_is_adopted(settings: Settings) -> None:
    old = generated_secret(settings.home, "graph.password")  # what SutazAI <= 0.1 wrote
    secret = read_secret(settings, "graph/password", generate=True, legacy="graph.password")
    assert secret.get_secret_value() == old
    assert (settings.home / "secrets" / "graph" / "password").read_text() == old
    assert read_secret(settings, "graph/password").get_secret_value() == old


def test_retired_settings_are_refused_with_their_replacement(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUTAZAI_KG_PASSWORD", fake_value())
    with pytest.raises(ConfigError, match=r"SUTAZAI_KG_PASSWORD is no longer read.*"
                       r"SUTAZAI_SECRET_GRAPH_PASSWORD"):
        read_secret(settings, "graph/password", generate=True)
    assert not hasattr(Settings(), "kg_password")
    assert optional_secret(settings, "kubeflow/token") is None


def test_the_provider_is_shared_per_home_and_config(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = settings_provider(settings)
    assert settings_provider(Settings(home=settings.home)) is first
    assert settings_provider(Settings(home=tmp_path / "other")) is not first
    monkeypatch.setenv("SUTAZAI_SECRETS_PROVIDER", "env")
    env_only = settings_provider(settings)
    assert env_only is not first and env_only.label == "env"


def test_put_writes_the_file_provider_and_is_audited_by_name(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    keys, rotated = '{"k1": {"role": "admin"}}', '{"k2": {"role": "viewer"}}'
    provider = settings_provider(settings)
    provider.put("serving/api-keys", keys)
    path = settings.home / "secrets" / "serving" / "api-keys"
    assert path.read_text() == keys and modes(path) == 0o600 and modes(path.parent) == 0o700
    assert provider.get("serving/api-keys").get_secret_value() == keys
    provider.put("serving/api-keys", rotated)  # replaced atomically
    assert provider.get("serving/api-keys").get_secret_value() == rotated
    assert sorted(p.name for p in path.parent.iterdir()) == ["api-keys"]
    # the chain writes its backing store; an environment override still wins on reads
    override = fake_value()
    monkeypatch.setenv("SUTAZAI_SECRET_SERVING_API_KEYS", override)
    assert provider.get("serving/api-keys").get_secret_value() == override
    with pytest.raises(ConfigError, match="empty"):
        provider.put("serving/api-keys", " ")
    with pytest.raises(ConfigError, match="secret name"):
        provider.put("../escape", keys)
    log = open_audit_log(settings)
    writes = [(r.action, r.target, r.result) for r in log.records()
              if r.action == "secret.write"]
    assert writes == [("secret.write", "serving/api-keys", "ok")] * 2
    text = log.path.read_text()
    assert keys not in text and rotated not in text and override not in text
    assert log.verify().ok


def test_the_environment_provider_cannot_be_written(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUTAZAI_SECRETS_PROVIDER", "env")
    with pytest.raises(SecretError, match=r"SUTAZAI_SECRET_SERVING_API_KEYS.*writable"):
        settings_provider(settings).put("serving/api-keys", "{}")
    [record] = open_audit_log(settings).records()
    assert (record.action, record.result) == ("secret.write", "error")


def test_mlflow_credentials_are_exported_for_an_http_server_only(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                     "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.setenv(variable, "placeholder")  # restored (removed) after the test
        monkeypatch.delenv(variable)
    user, chosen = "sutazai", fake_value()
    provider = settings_provider(settings)
    provider.put("mlflow/username", user)
    assert export_mlflow_credentials(settings.tracking_uri, settings) == []  # SQLite
    with pytest.raises(ConfigError, match="needs both"):
        export_mlflow_credentials("http://mlflow.internal:5000", settings)
    provider.put("mlflow/password", chosen)
    assert export_mlflow_credentials("https://mlflow.internal", settings) == [
        "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]
    import os

    assert (os.environ["MLFLOW_TRACKING_USERNAME"],
            os.environ["MLFLOW_TRACKING_PASSWORD"]) == (user, chosen)
    assert "MLFLOW_TRACKING_TOKEN" not in os.environ
    token = fake_value()
    monkeypatch.setenv("SUTAZAI_SECRET_MLFLOW_TOKEN", token)
    assert "MLFLOW_TRACKING_TOKEN" in export_mlflow_credentials("http://m:5000", settings)
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == token
