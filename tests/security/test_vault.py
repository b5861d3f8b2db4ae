"""Vault/OpenBao secrets against a real OpenBao dev server (tests/openbao.py).

Token, AppRole and Kubernetes logins, KV v2 reads, the TTL cache, token renewal, and what
happens when Vault goes away mid-run. Kubernetes auth runs through OpenBao's real
kubernetes auth method; only the cluster's TokenReview API is a stub HTTP server here
(there is no cluster), so the login request, OpenBao's JWT parsing and role binding checks
are the real ones.
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from secrets import token_urlsafe
from typing import Any, ClassVar

import hvac
import pytest
from pydantic import SecretStr

from sutazai.config import Settings
from sutazai.security.audit import open_audit_log
from sutazai.security.secrets import (
    SecretError,
    SecretNotFoundError,
    SecretUnavailableError,
    provider_from,
    settings_provider,
)
from sutazai.security.vault import TokenAuth, VaultProvider
from sutazai.serving.process import free_port
from tests.openbao import ROOT_TOKEN, OpenBao, running_openbao

POLICY = 'path "secret/data/sutazai/*" { capabilities = ["read"] }'


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[OpenBao]:
    with running_openbao(tmp_path / "openbao") as server:
        server.root().sys.create_or_update_policy("sutazai-read", POLICY)
        yield server


def value() -> str:
    return "v-" + token_urlsafe(18)


def put(bao: OpenBao, path: str, **fields: str) -> None:
    bao.root().secrets.kv.v2.create_or_update_secret(path=path, secret=fields,
                                                     mount_point="secret")


def with_token(bao: OpenBao, token: str, **options: Any) -> VaultProvider:
    return VaultProvider(bao.addr, TokenAuth(lambda: SecretStr(token)), **options)


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_token_auth_reads_kv_v2_and_audits(bao: OpenBao, settings: Settings,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    password, keys = value(), value()
    put(bao, "sutazai/mlflow", password=password, user="mlflow")
    put(bao, "sutazai/serving", **{"api-keys": keys})
    monkeypatch.setenv("SUTAZAI_SECRETS_PROVIDER", "vault")
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_ADDR", bao.addr)
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_TOKEN", ROOT_TOKEN)
    provider = provider_from(settings)
    assert provider.get("mlflow/password").get_secret_value() == password
    assert provider.get("serving/api-keys").get_secret_value() == keys
    with pytest.raises(SecretNotFoundError, match=r"has no field 'token'.*bao kv patch"):
        provider.get("mlflow/token")
    with pytest.raises(SecretNotFoundError, match="no secret secret/sutazai/kubeflow"):
        provider.get("kubeflow/token")
    assert password not in repr(provider.get("mlflow/password"))
    log = open_audit_log(settings)
    assert [(r.target, r.result) for r in log.records()] == [
        ("mlflow/password", "ok"), ("serving/api-keys", "ok"), ("mlflow/token", "absent"),
        ("kubeflow/token", "absent"), ("mlflow/password", "ok")]
    assert {r.details["provider"] for r in log.records()} == {f"env,vault:{bao.addr}"}
    text = log.path.read_text()
    assert password not in text and keys not in text and ROOT_TOKEN not in text


def test_mount_and_path_are_configurable(bao: OpenBao) -> None:
    secret = value()
    root = bao.root()
    root.sys.enable_secrets_engine("kv", path="platform", options={"version": "2"})
    root.secrets.kv.v2.create_or_update_secret(path="teams/ml/sutazai/graph",
                                               secret={"password": secret}, mount_point="platform")
    provider = with_token(bao, ROOT_TOKEN, mount="platform", path="teams/ml/sutazai")
    assert provider.get("graph/password").get_secret_value() == secret


def test_approle_login_and_read(bao: OpenBao, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    secret = value()
    put(bao, "sutazai/airflow", admin=secret)
    put(bao, "elsewhere/airflow", admin=value())
    root = bao.root()
    root.sys.enable_auth_method("approle")
    root.auth.approle.create_or_update_approle("sutazai", token_policies=["sutazai-read"],
                                               token_ttl="1h")
    role_id = root.auth.approle.read_role_id("sutazai")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("sutazai")["data"]["secret_id"]
    monkeypatch.setenv("SUTAZAI_SECRETS_PROVIDER", "vault")
    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_AUTH", "approle")
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_ROLE_ID_FILE",
                       str(private_file(tmp_path / "role-id", role_id)))
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_SECRET_ID", secret_id)
    assert provider_from(settings).get("airflow/admin").get_secret_value() == secret

    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_PATH", "elsewhere")  # outside the policy
    with pytest.raises(SecretError, match=r"refused to read secret/elsewhere/airflow.*"
                                          r"allow 'read' on secret/data/elsewhere/airflow"):
        provider_from(settings).get("airflow/admin")

    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_SECRET_ID", value())
    with pytest.raises(SecretError, match=r"refused the approle login.*secret_id") as caught:
        provider_from(settings).get("airflow/admin")
    assert secret_id not in str(caught.value) and role_id not in str(caught.value)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def service_account_jwt(namespace: str, name: str) -> str:
    """A JWT shaped like a Kubernetes service-account token; the stub TokenReview
    vouches for it (a real cluster checks the signature)."""
    claims = {"iss": "kubernetes/serviceaccount",
              "sub": f"system:serviceaccount:{namespace}:{name}",
              "kubernetes.io/serviceaccount/namespace": namespace,
              "kubernetes.io/serviceaccount/service-account.name": name,
              "kubernetes.io/serviceaccount/service-account.uid": f"uid-{name}"}
    signature = base64.urlsafe_b64encode(b"unchecked").rstrip(b"=").decode()
    return f"{_b64({'alg': 'RS256', 'kid': 'test'})}.{_b64(claims)}.{signature}"


class TokenReview(BaseHTTPRequestHandler):
    """POST /apis/authentication.k8s.io/v1/tokenreviews, as the API server answers it."""

    reviews: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.reviews.append({"path": self.path, "body": body,
                             "authorization": self.headers.get("Authorization")})
        payload = body["spec"]["token"].split(".")[1]
        subject = json.loads(base64.urlsafe_b64decode(payload + "=="))["sub"]
        name = subject.rsplit(":", 1)[-1]
        status = {"authenticated": True, "user": {"username": subject, "uid": f"uid-{name}"}}
        data = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                           "status": status}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def self_signed_ca() -> str:
    """OpenBao wants a cluster CA in the config even for an http:// API server."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-cluster-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def api_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), TokenReview)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    TokenReview.reviews = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_kubernetes_auth_login_and_read(bao: OpenBao, api_server: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        settings: Settings) -> None:
    secret = value()
    put(bao, "sutazai/kubeflow", token=secret)
    root = bao.root()
    root.sys.enable_auth_method("kubernetes")
    root.auth.kubernetes.configure(kubernetes_host=api_server, kubernetes_ca_cert=self_signed_ca(),
                                   token_reviewer_jwt="reviewer-jwt", disable_local_ca_jwt=True)
    root.auth.kubernetes.create_role("sutazai", bound_service_account_names=["sutazai"],
                                     bound_service_account_namespaces=["mlops"],
                                     policies=["sutazai-read"], ttl="1h")
    jwt = tmp_path / "token"
    jwt.write_text(service_account_jwt("mlops", "sutazai"))
    jwt.chmod(0o644)  # as the kubelet mounts it by default: accepted for the JWT
    monkeypatch.setenv("SUTAZAI_SECRETS_PROVIDER", "vault")
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_ADDR", bao.addr)
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_AUTH", "kubernetes")
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_ROLE", "sutazai")
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_JWT_FILE", str(jwt))
    assert provider_from(settings).get("kubeflow/token").get_secret_value() == secret
    [review] = TokenReview.reviews
    assert review["path"] == "/apis/authentication.k8s.io/v1/tokenreviews"
    assert review["body"]["spec"]["token"] == jwt.read_text()
    assert review["authorization"] == "Bearer reviewer-jwt"

    jwt.write_text(service_account_jwt("default", "someone-else"))  # not bound to the role
    with pytest.raises(SecretError, match=r"refused the kubernetes login.*binds this pod"):
        provider_from(settings).get("kubeflow/token")


def test_the_cache_serves_until_its_ttl(bao: OpenBao) -> None:
    first, second = value(), value()
    put(bao, "sutazai/graph", password=first)
    provider = with_token(bao, ROOT_TOKEN, cache_ttl_s=0.5)
    assert provider.get("graph/password").get_secret_value() == first
    put(bao, "sutazai/graph", password=second)  # rotated in Vault
    assert provider.get("graph/password").get_secret_value() == first  # not asked yet
    time.sleep(0.55)
    assert provider.get("graph/password").get_secret_value() == second


class Clock:
    """Time for the cache, moved by the test, so a slow shutdown cannot make it flaky."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_vault_stopped_mid_run(bao: OpenBao) -> None:
    mlflow, graph = value(), value()
    put(bao, "sutazai/mlflow", password=mlflow)
    put(bao, "sutazai/graph", password=graph)
    clock = Clock()
    provider = with_token(bao, ROOT_TOKEN, cache_ttl_s=60, clock=clock)
    provider.get("mlflow/password")
    clock.now += 30
    provider.get("graph/password")  # cached half a TTL later
    bao.stop()
    clock.now += 29
    assert provider.get("mlflow/password").get_secret_value() == mlflow
    assert provider.get("graph/password").get_secret_value() == graph
    with pytest.raises(SecretUnavailableError, match="no value was cached"):
        provider.get("airflow/admin")
    clock.now += 2  # mlflow's entry has expired, graph's has not
    with pytest.raises(SecretUnavailableError) as caught:
        provider.get("mlflow/password")
    message = str(caught.value)
    assert "'mlflow/password'" in message and bao.addr in message
    assert "unavailable (connection refused" in message and "expired 1 s ago" in message
    assert "SUTAZAI_SECRETS_VAULT_ADDR" in message and "SUTAZAI_SECRETS_CACHE_TTL_S" in message
    assert mlflow not in message and ROOT_TOKEN not in message
    assert provider.get("graph/password").get_secret_value() == graph  # nothing else lost

    bao.start()  # back (dev mode: empty, same port and root token): the provider recovers
    put(bao, "sutazai/mlflow", password=mlflow)
    assert provider.get("mlflow/password").get_secret_value() == mlflow
    clock.now += 60
    with pytest.raises(SecretNotFoundError, match="no secret secret/sutazai/graph"):
        provider.get("graph/password")  # the restarted dev server lost it: said so, not served


def test_wrong_and_expired_tokens_are_explained(bao: OpenBao) -> None:
    put(bao, "sutazai/mlflow", password=value())
    with pytest.raises(SecretError, match=r"refused the token login.*wrong, expired or revoked"):
        with_token(bao, value()).get("mlflow/password")
    token = bao.root().auth.token.create(policies=["sutazai-read"], ttl="2s",
                                         renewable=False)["auth"]["client_token"]
    provider = with_token(bao, token, cache_ttl_s=0, renew_before_s=0)
    provider.get("mlflow/password")
    time.sleep(2.2)
    with pytest.raises(SecretError, match=r"refused the token login.*SUTAZAI_SECRETS_VAULT_TOKEN"):
        provider.get("mlflow/password")


def test_a_renewable_token_is_renewed_near_expiry(bao: OpenBao) -> None:
    put(bao, "sutazai/mlflow", password=value())
    created = bao.root().auth.token.create(policies=["sutazai-read"], ttl="3s",
                                           renewable=True)["auth"]
    provider = with_token(bao, created["client_token"], cache_ttl_s=0, renew_before_s=2)
    provider.get("mlflow/password")  # login (lookup-self): 2-3 s left
    time.sleep(1.5)
    provider.get("mlflow/password")  # under 2 s left: renew-self, back to 3 s
    assert (provider.renewals, provider.logins) == (1, 1)
    looked_up = bao.root().auth.token.lookup_accessor(created["accessor"])["data"]
    assert looked_up["last_renewal_time"] and looked_up["ttl"] >= 2
    long = bao.root().auth.token.create(policies=["sutazai-read"], ttl="60s",
                                        renewable=True)["auth"]["client_token"]
    far = with_token(bao, long, cache_ttl_s=0, renew_before_s=5)
    far.get("mlflow/password")
    far.get("mlflow/password")
    assert far.renewals == 0  # not near expiry: no renewal traffic
    assert created["client_token"] not in repr(provider)
    assert isinstance(provider.client, hvac.Client)


def stored(bao: OpenBao, path: str) -> dict[str, Any]:
    response = bao.root().secrets.kv.v2.read_secret_version(
        path=path, mount_point="secret", raise_on_deleted_version=True)
    return dict(response["data"]["data"])


def test_api_keys_are_written_to_vault_and_read_back(
        bao: OpenBao, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``sutazai keys`` does: ``settings_provider(settings).put(api_keys_secret, json)``
    then ``.get``; the field is patched into the service's secret (other fields kept), a
    missing secret is created, and the TTL cache never serves the old value after a write."""
    monkeypatch.setenv("SUTAZAI_SECRETS_PROVIDER", "vault")
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_ADDR", bao.addr)
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_TOKEN", ROOT_TOKEN)
    other = value()
    put(bao, "sutazai/serving", other=other)
    keys = json.dumps({value(): {"role": "admin"}})
    rotated = json.dumps({value(): {"role": "viewer"}})
    provider = settings_provider(settings)
    provider.put(settings.api_keys_secret, keys)
    assert stored(bao, "sutazai/serving") == {"other": other, "api-keys": keys}
    assert provider.get(settings.api_keys_secret).get_secret_value() == keys  # now cached
    provider.put(settings.api_keys_secret, rotated)
    assert provider.get(settings.api_keys_secret).get_secret_value() == rotated
    assert settings_provider(settings) is provider  # one provider, one cache, one login
    key = base64.b64encode(b"k" * 32).decode()
    provider.put("repository/key", key)  # no secret sutazai/repository yet: created
    assert stored(bao, "sutazai/repository") == {"key": key}
    bao.root().secrets.kv.v2.delete_latest_version_of_secret("sutazai/repository",
                                                             mount_point="secret")
    provider.put("repository/key", key)  # on top of a deleted version: a new one
    assert stored(bao, "sutazai/repository") == {"key": key}
    log = open_audit_log(settings)
    assert [(r.action, r.target, r.result) for r in log.records()] == [
        ("secret.write", "serving/api-keys", "ok"), ("secret.read", "serving/api-keys", "ok"),
        ("secret.write", "serving/api-keys", "ok"), ("secret.read", "serving/api-keys", "ok"),
        ("secret.write", "repository/key", "ok"), ("secret.write", "repository/key", "ok")]
    text = log.path.read_text()
    assert keys not in text and rotated not in text and key not in text and log.verify().ok


def test_concurrent_writers_keep_each_others_fields(bao: OpenBao) -> None:
    """Four processes' worth of providers (each its own client and lock) write four fields
    of one secret at once: check-and-set retries, so none is lost."""
    values = {f"field{i}": value() for i in range(4)}
    providers = [with_token(bao, ROOT_TOKEN) for _ in values]
    threads = [threading.Thread(target=p.put, args=(f"tls/{field}", secret))
               for p, (field, secret) in zip(providers, values.items(), strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stored(bao, "sutazai/tls") == values


def test_a_read_only_token_cannot_write(bao: OpenBao) -> None:
    token = bao.root().auth.token.create(policies=["sutazai-read"], ttl="1h")
    provider = with_token(bao, token["auth"]["client_token"])
    put(bao, "sutazai/serving", **{"api-keys": "{}"})
    assert provider.get("serving/api-keys").get_secret_value() == "{}"
    with pytest.raises(SecretError, match=r"refused to write secret/sutazai/serving.*"
                                          r"'read', 'create' and 'update'"):
        provider.put("serving/api-keys", '{"k": 1}')
    assert stored(bao, "sutazai/serving") == {"api-keys": "{}"}
