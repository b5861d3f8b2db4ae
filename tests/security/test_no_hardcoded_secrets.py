"""No secret is committed, and no secret SutazAI reads leaks into its records.

The scan runs detect-secrets' default plugins over every tracked file. What it flags is
either a real problem (fix the code: read it through ``sutazai.security.secrets``) or a reviewed
false positive listed below with its reason. Allowed findings are keyed by detect-secrets'
hash of the flagged string, so changing the value (or adding a new one) fails again and
gets reviewed again.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from secrets import token_urlsafe

import pytest

from sutazai.config import Settings
from sutazai.security.audit import open_audit_log
from sutazai.security.secrets import SecretNotFoundError, provider_from

ROOT = Path(__file__).resolve().parents[2]

# Files whose purpose is to contain fake secrets; the whole file is skipped.
EXCLUDED = {
    "tests/learning/test_data_gate.py": "feeds fake AWS/GitHub/Slack keys, a JWT and a private-key "
                               "header to the data gate to prove it masks them",
}

# (path, detect-secrets type, sha1 of the flagged string) -> why it is not a secret
ALLOWED = {
    ("models/catalog.yaml", "Hex High Entropy String",
     "1e7ad0450339fbd90e6988712a5a5c006985a00f"):  # pragma: allowlist secret
        "public sha256 pin of the Gemma GGUF file",
    ("tests/conftest.py", "Hex High Entropy String",
     "1e7ad0450339fbd90e6988712a5a5c006985a00f"):  # pragma: allowlist secret
        "the same public sha256 pin, in a fixture",
    ("models/catalog.yaml", "Hex High Entropy String",
     "ae370b39fd4f1d71e98a87324118754747d178e2"):  # pragma: allowlist secret
        "public sha256 pin of the SmolLM2 GGUF file",
    ("tests/conftest.py", "Hex High Entropy String",
     "ae370b39fd4f1d71e98a87324118754747d178e2"):  # pragma: allowlist secret
        "the same public sha256 pin, in a fixture",
    ("tests/hub_endpoint.py", "Hex High Entropy String",
     "158b484ae1f6f64f89da22397d25fbdafad02252"):  # pragma: allowlist secret
        "the fake hub's placeholder commit id",
    ("sutazai/repository/crypto.py", "Secret Keyword",
     "03b9b10fb6ada25522d4f6907c708060b8eef646"):  # pragma: allowlist secret
        "KEY_SECRET is the secret's *name* repository/key",
    ("sutazai/repository/crypto.py", "Secret Keyword",
     "16d77125f60a6daf97184b88e496b81bf9ab82f9"):  # pragma: allowlist secret
        "PREVIOUS_KEY_SECRET is the secret's *name* repository/previous-key",
    ("sutazai/security/rate_limit.py", "Secret Keyword",
     "b4be11f766949067c36984e4cc8b23b3df908aca"):  # pragma: allowlist secret
        "PASSWORD_SECRET is the secret's *name* serving/rate-limit-password",
    ("tests/observability/test_pipeline_metrics.py", "Basic Auth Credentials",
     "f3bbbd66a63d4bf1747940578ec3d0103530e21d"):  # pragma: allowlist secret
        "a made-up password in a Pushgateway URL, to test that logs redact it",
    ("tests/observability/test_pipeline_metrics.py", "Basic Auth Credentials",
     "fef341f85d87439e7d91a2d465b9871ef66b5e98"):  # pragma: allowlist secret
        "a made-up password a test Pushgateway checks, to test basic auth is sent",
    ("sutazai/knowledge/server.py", "Secret Keyword",
     "109c04924c75b3074246db1ea08e390eeca8c7f4"):  # pragma: allowlist secret
        "PASSWORD_FILE is the file *name* graph.password",
    ("infra/compose.yaml", "Secret Keyword",
     "e1082542b4be2e9e9597b2c7cb0e491548aaff4b"):  # pragma: allowlist secret
        "AIRFLOW__SECRETS__BACKEND names the Vault backend class",
    ("infra/values/airflow.yaml", "Secret Keyword",
     "72355298a3f4c997f12b5751db1822bc753661e8"):  # pragma: allowlist secret
        "name of the Kubernetes Secret airflow-git-credentials",
    ("infra/values/airflow.yaml", "Secret Keyword",
     "b4a21ba1426d2fdc69b60e76905014418eb3b77a"):  # pragma: allowlist secret
        "name of the Kubernetes Secret airflow-metadata",
    ("infra/values/airflow.yaml", "Secret Keyword",
     "0f292cf42ae35465b7813e05e00ec62ac6df2304"):  # pragma: allowlist secret
        "name of the Kubernetes Secret airflow-fernet-key",
    ("infra/values/airflow.yaml", "Secret Keyword",
     "9c11c5590250ee764e9468dd68431510f0001b87"):  # pragma: allowlist secret
        "name of the Kubernetes Secret airflow-api-secret-key",
    ("infra/values/mlflow.yaml", "Secret Keyword",
     "5baa61e4c9b93f3f0682250b6cf8331b7ee68fd8"):  # pragma: allowlist secret
        "passwordKey: the key *name* 'password'",
    ("infra/values/mlflow.yaml", "Secret Keyword",
     "d45f0e7b97d44dab025c997d45d8c8b8edb5a891"):  # pragma: allowlist secret
        "keyOfSecretAccessKey: a key name",
    ("infra/values/neo4j.yaml", "Secret Keyword",
     "13540f2c9595a09ad60fbf6d83ca3f12fd96e00a"):  # pragma: allowlist secret
        "passwordFromSecret: the Secret name neo4j-auth",
    ("tests/test_infra.py", "Secret Keyword",
     "f3bbbd66a63d4bf1747940578ec3d0103530e21d"):  # pragma: allowlist secret
        "'hunter2' fed to the infra test's own plaintext-secret detector",
    ("tests/test_infra.py", "Basic Auth Credentials",
     "f3bbbd66a63d4bf1747940578ec3d0103530e21d"):  # pragma: allowlist secret
        "the same fake in a postgresql:// URL",
    ("tests/test_infra.py", "Secret Keyword",
     "177ac810c39603d165e43e6634a1a6484570398c"):  # pragma: allowlist secret
        "fake API_KEY 'abc' fed to that detector",
    ("tests/test_infra.py", "Secret Keyword",
     "5baa61e4c9b93f3f0682250b6cf8331b7ee68fd8"):  # pragma: allowlist secret
        "a passwordKey entry (a key name) the detector must not flag",
}


def findings() -> list[tuple[str, str, str, int]]:
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    files = [name for name in listed
             if name and name not in EXCLUDED and (ROOT / name).is_file()]
    collection = SecretsCollection(root=str(ROOT))
    with default_settings():
        collection.scan_files(*files, num_processors=min(4, os.cpu_count() or 1))
    return sorted((name, secret.type, secret.secret_hash, secret.line_number or 0)
                  for name, secret in collection)


@pytest.mark.slow  # ~6 s idle, ~15 s on a loaded 2-core machine
def test_no_secret_is_committed() -> None:
    found = findings()
    unexpected = [f"{name}:{line}: {kind} (hash {digest})"
                  for name, kind, digest, line in found if (name, kind, digest) not in ALLOWED]
    assert not unexpected, (
        "detect-secrets flags these tracked files; move real secrets to the secrets provider "
        "(sutazai.security.secrets), or, for a reviewed false positive, add it to ALLOWED with its "
        "reason:\n" + "\n".join(unexpected))
    stale = set(ALLOWED) - {(name, kind, digest) for name, kind, digest, _ in found}
    assert not stale, f"ALLOWED entries no longer found (remove them): {sorted(stale)}"
    for path in EXCLUDED:
        assert (ROOT / path).is_file(), f"EXCLUDED names a file that is gone: {path}"


@pytest.mark.slow  # creating the MLflow SQLite store
def test_a_read_secret_stays_out_of_logs_audit_and_mlflow(
        settings: Settings, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from sutazai.registry import open_registry

    caplog.set_level(logging.DEBUG)
    from_env, from_file = "e-" + token_urlsafe(20), "f-" + token_urlsafe(20)
    monkeypatch.setenv("SUTAZAI_SECRETS_PROVIDER", "file")
    monkeypatch.setenv("SUTAZAI_SECRET_KUBEFLOW_TOKEN", from_env)
    folder = settings.home / "secrets" / "mlflow"
    folder.mkdir(parents=True)
    (folder / "password").write_text(from_file)
    (folder / "password").chmod(0o600)
    provider = provider_from(settings)
    token, password = provider.get("kubeflow/token"), provider.get("mlflow/password")
    assert (token.get_secret_value(), password.get_secret_value()) == (from_env, from_file)
    with pytest.raises(SecretNotFoundError) as missing:
        provider.get("graph/password")
    logging.getLogger("sutazai.test").info("read %s and %s", token, password)

    # the settings and the secrets, logged to MLflow the way a careless run would
    registry = open_registry(settings)
    params = {k: v for k, v in settings.model_dump(mode="json").items() if v is not None}
    run_id = registry.start_run("secrets-check", tags={"sutazai.step": "secrets-check"},
                                params={**params, "token": token, "password": password,
                                        "kfp_token": token},
                                experiment="sutazai-secrets-check")
    logged = registry.client.get_run(run_id).data

    audit_text = open_audit_log(settings).path.read_text()
    assert [json.loads(line)["target"] for line in audit_text.splitlines()] == [
        "kubeflow/token", "mlflow/password", "graph/password"]
    assert logged.params["token"] == "**********" and logged.params["kfp_token"] == "**********"
    for value in (from_env, from_file):
        for where, text in (("audit log", audit_text), ("logs", caplog.text),
                            ("error", str(missing.value)), ("repr", repr(provider)),
                            ("MLflow params", json.dumps(logged.params)),
                            ("MLflow tags", json.dumps(logged.tags))):
            assert value not in text, f"a secret value leaked into the {where}"
