"""Access control: API keys from the secret provider mapped to roles, on the real gateway
(fronting the real Gemma 3 270M on llama.cpp) and on the CLI; denials audited, per-key
rate limits answered with 429."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from sutazai.cli.main import app
from sutazai.cli.permissions import COMMAND_PERMISSIONS, READ_ONLY
from sutazai.config import Settings, load_settings
from sutazai.errors import ConfigError, SutazAIError
from sutazai.repository import open_repository
from sutazai.security.access import (
    PERMISSIONS,
    AccessGuard,
    ApiKey,
    Denial,
    DenialRecorder,
    KeyStore,
    KeyTable,
    Principal,
    RateLimiter,
    authenticate,
    new_key,
    parse_duration,
    permission_for,
    presented_key,
)
from sutazai.security.audit import AuditRecord, open_audit_log
from sutazai.serving.engines import RunningEngine, start_engine
from sutazai.serving.gateway import GatewayThread, create_app
from sutazai.serving.process import free_port
from tests.benchmark.test_benchmark_run import publish

runner = CliRunner()


@dataclass
class Ran:
    exit_code: int
    output: str


def sutazai(*args: str) -> Ran:
    """The CLI in-process, printing errors as ``sutazai.cli.main.main`` does."""
    result = runner.invoke(app, list(args))
    if isinstance(result.exception, SutazAIError):
        return Ran(result.exception.exit_code, f"error: {result.exception}")
    return Ran(result.exit_code, result.output)


def write_table(settings: Settings, *entries: ApiKey) -> None:
    """The key table as the file provider keeps it (<home>/secrets/serving/api-keys, 0600)."""
    path = settings.home / "secrets" / settings.api_keys_secret
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(KeyTable(keys={e.id: e for e in entries}).model_dump_json())


# --- keys, roles, limits: pure ----------------------------------------------------------------


def test_a_key_authenticates_only_itself_and_never_after_expiry() -> None:
    key, entry = new_key("search", "operator", expires_in=timedelta(days=1))
    other_key, other = new_key("batch", "viewer")
    table = KeyTable(keys={entry.id: entry, other.id: other})
    found = authenticate(table, key)
    assert isinstance(found, Principal) and found.role == "operator" and found.name == "search"
    assert key not in entry.model_dump_json() and entry.sha256 in entry.model_dump_json()
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    for wrong, code in ((None, "missing_api_key"), ("", "missing_api_key"),
                        (forged, "invalid_api_key"), ("sk-sutazai-nope", "invalid_api_key"),
                        (other_key.replace(other.id, entry.id), "invalid_api_key")):
        denial = authenticate(table, wrong)
        assert isinstance(denial, Denial) and denial.status == 401 and denial.code == code
    later = datetime.now(UTC) + timedelta(days=2)
    expired = authenticate(table, key, now=later)
    assert isinstance(expired, Denial) and expired.code == "expired_api_key"
    assert "ask an admin" in expired.message


def test_roles_grant_nested_permissions_and_routes_name_theirs() -> None:
    assert PERMISSIONS["viewer"] < PERMISSIONS["operator"] < PERMISSIONS["admin"]
    assert "serve" not in PERMISSIONS["viewer"] and "promote" not in PERMISSIONS["operator"]
    assert permission_for("GET", "/health") is None
    assert permission_for("GET", "/metrics") == "read"
    assert permission_for("GET", "/v1/models") == "read"
    assert permission_for("POST", "/v1/chat/completions") == "serve"
    assert permission_for("POST", "/v1/feedback") == "ingest"
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"x-api-key": "xyz"}) == "xyz"
    assert presented_key({"authorization": "Basic abc"}) is None


def test_the_token_bucket_refills_at_the_rate_and_keys_do_not_share_it() -> None:
    limiter = RateLimiter(rps=10, burst=3)
    assert [limiter.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a", now=0.0)
    assert wait == pytest.approx(0.1)
    assert limiter.take("b", now=0.0) == 0.0  # another key has its own bucket
    assert limiter.take("a", now=0.11) == 0.0  # one token back after 1/rps
    assert limiter.take("a", rps=1, burst=1, now=0.11) > 0.5  # a key's own, lower limit


def test_denial_records_are_folded_so_a_flood_cannot_flood_the_audit_log(
        settings: Settings) -> None:
    recorder = DenialRecorder(settings, interval_s=1.0)
    denial = Denial(401, "invalid_api_key", "no")
    assert recorder.due(denial, now=10.0) == 1
    assert [recorder.due(denial, now=10.0 + i / 100) for i in range(1, 50)] == [None] * 49
    assert recorder.due(Denial(403, "permission_denied", "no"), now=10.5) == 1  # other reason
    assert recorder.due(denial, now=11.5) == 50  # this record stands for the 49 folded


def test_durations_parse_and_nonsense_is_refused() -> None:
    assert parse_duration("90d") == timedelta(days=90)
    assert parse_duration("12h") == timedelta(hours=12)
    for bad in ("", "0d", "3 weeks", "-1d", "1y"):
        with pytest.raises(ConfigError, match="not a duration"):
            parse_duration(bad)


def test_a_corrupt_key_table_is_a_clear_error_not_an_open_door(settings: Settings) -> None:
    path = settings.home / "secrets" / settings.api_keys_secret
    path.parent.mkdir(parents=True)
    path.touch(mode=0o600)
    path.write_text('{"version": 1, "keys": {"x": {"role": "root"}}}')
    with pytest.raises(ConfigError, match="not valid"):
        KeyStore(settings).load()


def test_a_server_without_keys_refuses_to_start(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="sutazai keys create"):
        AccessGuard(settings).require_keys()


# --- the CLI ------------------------------------------------------------------------------------


def leaf_commands(command: Any, prefix: str = "") -> Iterator[str]:
    if hasattr(command, "commands"):  # a group (typer's own click-compatible classes)
        for name, sub in command.commands.items():
            yield from leaf_commands(sub, f"{prefix} {name}".strip())
    else:
        yield prefix


def test_every_cli_command_is_either_read_only_or_checked() -> None:
    commands = set(leaf_commands(typer.main.get_command(app)))
    unclassified = commands - set(COMMAND_PERMISSIONS) - READ_ONLY
    assert not unclassified, f"classify these in sutazai/cli/permissions.py: {unclassified}"
    assert not (set(COMMAND_PERMISSIONS) | READ_ONLY) - commands  # no stale entries


def test_cli_roles_are_checked_and_denials_audited(settings: Settings,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUTAZAI_CLI_ROLE", "viewer")
    result = sutazai("models", "rm", "gemma:1")
    assert result.exit_code == 1, result.output
    assert "needs permission 'delete'" in result.output and "SUTAZAI_API_KEY" in result.output
    assert sutazai("models", "rm", "--help").exit_code == 0  # help stays open
    assert sutazai("models", "list", "--json").exit_code == 0  # read-only
    denied = [r for r in open_audit_log(settings).records() if r.action == "access.denied"]
    assert len(denied) == 1 and denied[0].target == "sutazai models rm"
    assert denied[0].result == "denied" and denied[0].details["permission"] == "delete"

    operator_key, operator = new_key("ci", "operator")
    admin_key, admin = new_key("ops", "admin")
    write_table(settings, operator, admin)
    monkeypatch.setenv("SUTAZAI_API_KEY", operator_key)
    result = sutazai("models", "rollback", "text-generation")
    assert result.exit_code == 1 and "needs permission 'promote'" in result.output
    assert "ask an admin" in result.output
    monkeypatch.setenv("SUTAZAI_API_KEY", admin_key)
    result = sutazai("models", "rm", "gemma:1")
    assert "permission" not in result.output  # past the check: the model is simply unknown
    monkeypatch.setenv("SUTAZAI_API_KEY", admin_key[:-3] + "xyz")
    result = sutazai("models", "rm", "gemma:1")
    assert result.exit_code == 1 and "not valid" in result.output
    assert admin_key not in result.output
    records = open_audit_log(settings).records()
    assert all(operator_key not in r.line() and admin_key not in r.line() for r in records)
    assert open_audit_log(settings).verify().ok


def test_keys_are_created_listed_and_revoked_through_the_provider(
        settings: Settings) -> None:
    created = sutazai("keys", "create", "team-search", "--role", "operator",
                                  "--expires", "30d", "--rps", "5", "--json")
    assert created.exit_code == 0, created.output
    made = json.loads(created.output)
    key = made["key"]
    stored = (settings.home / "secrets" / settings.api_keys_secret)
    assert os.stat(stored).st_mode & 0o077 == 0
    assert key not in stored.read_text()
    found = authenticate(KeyStore(settings).load(), key)
    assert isinstance(found, Principal) and found.rate_limit_rps == 5
    listed = json.loads(sutazai("keys", "list", "--json").output)
    assert [entry["id"] for entry in listed] == [made["id"]] and "sha256" not in listed[0]
    bad_role = sutazai("keys", "create", "x", "--role", "root")
    assert bad_role.exit_code == 1 and "viewer, operator, admin" in bad_role.output
    assert runner.invoke(app, ["keys", "revoke", made["id"]]).exit_code == 0
    assert isinstance(authenticate(KeyStore(settings).load(), key), Denial)
    actions = [r.action for r in open_audit_log(settings).records()]
    assert "key.create" in actions and "key.revoke" in actions


# --- the gateway ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path
           ) -> Iterator[tuple[Settings, RunningEngine]]:
    home = tmp_path_factory.mktemp("access-engine")
    settings = load_settings(home=home / ".sutazai", catalog=home / "catalog.yaml")
    publish(settings, gemma_gguf, "gemma3-270m")
    running = start_engine(settings, open_repository(settings).get("gemma3-270m"), "llamacpp")
    try:
        yield settings, running
    finally:
        running.stop()


@pytest.mark.slow
def test_the_gateway_admits_each_role_to_its_routes_only(
        engine: tuple[Settings, RunningEngine], settings: Settings) -> None:
    _, running = engine
    viewer_key, viewer = new_key("dashboards", "viewer")
    operator_key, operator = new_key("search", "operator")
    expired_key, expired = new_key("old", "admin", expires_in=timedelta(minutes=1),
                                   now=datetime.now(UTC) - timedelta(hours=1))
    write_table(settings, viewer, operator, expired)
    guard = AccessGuard(settings).require_keys()
    completion = {"prompt": "The sky is", "max_tokens": 2, "temperature": 0}
    with GatewayThread(create_app(running, guard=guard), "127.0.0.1", free_port()) as gateway, \
            httpx.Client(base_url=gateway.url, timeout=60) as client:
        assert client.get("/health").status_code == 200  # the probe needs no key
        missing = client.post("/v1/completions", json=completion)
        assert missing.status_code == 401 and missing.headers["www-authenticate"]
        assert missing.json()["error"]["code"] == "missing_api_key"

        def call(path: str, key: str, **kwargs: object) -> httpx.Response:
            return client.request("POST" if "json" in kwargs else "GET", path,
                                  headers={"Authorization": f"Bearer {key}"}, **kwargs)

        assert call("/metrics", viewer_key).status_code == 200
        assert call("/v1/models", viewer_key).status_code == 200
        denied = call("/v1/completions", viewer_key, json=completion)
        assert denied.status_code == 403 and "'serve'" in denied.json()["error"]["message"]
        served = call("/v1/completions", operator_key, json=completion)
        assert served.status_code == 200 and served.json()["choices"]
        via_header = client.get("/v1/models", headers={"X-API-Key": operator_key})
        assert via_header.status_code == 200
        old = call("/v1/completions", expired_key, json=completion)
        assert old.status_code == 401 and old.json()["error"]["code"] == "expired_api_key"
        spec = call("/openapi.json", viewer_key)
        assert spec.status_code == 200 and "securitySchemes" in json.dumps(spec.json())
    records = _wait_for_denials(settings, 3)
    reasons = sorted(r.details["reason"] for r in records)
    assert reasons == ["expired_api_key", "missing_api_key", "permission_denied"]
    assert all(viewer_key not in r.line() for r in open_audit_log(settings).records())


@pytest.mark.slow
def test_a_key_over_its_rate_limit_gets_429_and_others_are_unaffected(
        engine: tuple[Settings, RunningEngine], settings: Settings) -> None:
    _, running = engine
    slow_key, slow = new_key("slow", "viewer", rate_limit_rps=0.5, rate_limit_burst=2)
    other_key, other = new_key("other", "viewer")
    write_table(settings, slow, other)
    guard = AccessGuard(settings)
    with GatewayThread(create_app(running, guard=guard), "127.0.0.1", free_port()) as gateway, \
            httpx.Client(base_url=gateway.url, timeout=60) as client:
        codes = [client.get("/v1/models", headers={"x-api-key": slow_key}).status_code
                 for _ in range(4)]
        assert codes == [200, 200, 429, 429]
        limited = client.get("/v1/models", headers={"x-api-key": slow_key})
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert client.get("/v1/models", headers={"x-api-key": other_key}).status_code == 200
    records = _wait_for_denials(settings, 1)
    assert records[0].details["reason"] == "rate_limit_exceeded"
    assert records[0].actor == f"key:{slow.id}(slow)"


@pytest.mark.slow
def test_a_revoked_key_stops_working_after_the_refresh(
        engine: tuple[Settings, RunningEngine], settings: Settings) -> None:
    _, running = engine
    key, entry = new_key("leaving", "viewer")
    keep_key, keep = new_key("staying", "viewer")
    write_table(settings, entry, keep)
    guard = AccessGuard(settings, refresh_s=0.2)
    with GatewayThread(create_app(running, guard=guard), "127.0.0.1", free_port()) as gateway, \
            httpx.Client(base_url=gateway.url, timeout=60) as client:
        assert client.get("/v1/models", headers={"x-api-key": key}).status_code == 200
        KeyStore(settings).revoke(entry.id)
        deadline = time.monotonic() + 10
        status = 200
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.3)
            status = client.get("/v1/models", headers={"x-api-key": key}).status_code
        assert status == 401
        assert client.get("/v1/models", headers={"x-api-key": keep_key}).status_code == 200


def _wait_for_denials(settings: Settings, n: int, timeout_s: float = 10.0
                      ) -> list[AuditRecord]:
    deadline = time.monotonic() + timeout_s
    while True:
        records = [r for r in open_audit_log(settings).records() if r.action == "access.denied"]
        if len(records) >= n or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


# --- TLS and mutual TLS -------------------------------------------------------------------------


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed, plus a
    self-signed rogue client: PEM files, keys mode 0600."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)
    paths: dict[str, Path] = {}

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def save(label: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        paths[f"{label}_cert"] = folder / f"{label}.crt"
        paths[f"{label}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{label}_key"] = folder / f"{label}.key"
        paths[f"{label}_key"].touch(mode=0o600)
        paths[f"{label}_key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    def issue(subject: str, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
              key: ec.EllipticCurvePrivateKey, *, ca: bool = False, server: bool = False
              ) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=5))
                   .not_valid_after(now + timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        elif not ca:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    save("ca", ca_key, issue("sutazai-test-ca", name("sutazai-test-ca"), ca_key, ca_key,
                             ca=True))
    for label, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        save(label, key, issue(label, name("sutazai-test-ca"), ca_key, key, server=server))
    rogue = ec.generate_private_key(ec.SECP256R1())
    save("rogue", rogue, issue("rogue", name("rogue"), rogue, rogue))
    return paths


@pytest.mark.slow
def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(
        engine: tuple[Settings, RunningEngine], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sutazai.security.tls import client_ssl, server_tls

    _, running = engine
    pem = _certificates(tmp_path)
    settings = load_settings(tls="files", tls_cert_file=pem["server_cert"],
                             tls_key_file=pem["server_key"], tls_ca_file=pem["ca_cert"],
                             tls_client_cert_file=pem["client_cert"],
                             tls_client_key_file=pem["client_key"])
    with server_tls(settings) as tls:
        assert tls is not None and tls.mutual
        with GatewayThread(create_app(running), "127.0.0.1", free_port(), tls) as gateway:
            assert gateway.url.startswith("https://")
            with httpx.Client(verify=client_ssl(settings), timeout=30) as client:
                assert client.get(f"{gateway.url}/health").status_code == 200
            import ssl

            no_cert = ssl.create_default_context(cafile=str(pem["ca_cert"]))
            rogue = ssl.create_default_context(cafile=str(pem["ca_cert"]))
            rogue.load_cert_chain(pem["rogue_cert"], pem["rogue_key"])
            for context in (no_cert, rogue):
                with pytest.raises(httpx.HTTPError), \
                        httpx.Client(verify=context, timeout=30) as client:
                    client.get(f"{gateway.url}/health")
            with pytest.raises(httpx.HTTPError):  # the server is not trusted without the CA
                httpx.get(f"{gateway.url}/health", timeout=30)
            with pytest.raises(httpx.HTTPError):  # and plain HTTP is not spoken
                httpx.get(gateway.url.replace("https", "http") + "/health", timeout=30)

    loose = tmp_path / "loose.key"
    loose.write_bytes(pem["server_key"].read_bytes())
    loose.chmod(0o644)
    bad = load_settings(tls="files", tls_cert_file=pem["server_cert"], tls_key_file=loose)
    with pytest.raises(ConfigError, match="chmod 600"), server_tls(bad):
        pass
    mismatched = load_settings(tls="files", tls_cert_file=pem["server_cert"],
                               tls_key_file=pem["client_key"])
    with pytest.raises(ConfigError, match="key matches the certificate"), server_tls(mismatched):
        pass


@pytest.mark.slow
def test_tls_certificates_can_come_from_the_secret_provider(
        engine: tuple[Settings, RunningEngine], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sutazai.security.tls import server_tls

    _, running = engine
    pem = _certificates(tmp_path)
    monkeypatch.setenv("SUTAZAI_SECRET_TLS_CERT", pem["server_cert"].read_text())
    monkeypatch.setenv("SUTAZAI_SECRET_TLS_KEY", pem["server_key"].read_text())
    settings = load_settings(tls="secrets")
    with server_tls(settings) as tls:
        assert tls is not None and not tls.mutual
        assert tls.keyfile.stat().st_mode & 0o077 == 0
        folder = tls.keyfile.parent
        with GatewayThread(create_app(running), "127.0.0.1", free_port(), tls) as gateway:
            answer = httpx.get(f"{gateway.url}/health", verify=str(pem["ca_cert"]), timeout=30)
            assert answer.status_code == 200
    assert not folder.exists()  # the PEMs do not outlive the server
    reads = [r.target for r in open_audit_log(settings).records() if r.action == "secret.read"]
    assert "tls/cert" in reads and "tls/key" in reads


@pytest.mark.slow
def test_the_graph_extractor_calls_a_keyed_gateway_with_its_key(
        engine: tuple[Settings, RunningEngine], settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sutazai.errors import ExtractionError
    from sutazai.knowledge.llm_extract import LLMExtractor
    from sutazai.knowledge.models import Chunk

    _, running = engine
    key, entry = new_key("graph-extractor", "operator")
    write_table(settings, entry)
    with GatewayThread(create_app(running, guard=AccessGuard(settings)), "127.0.0.1",
                       free_port()) as gateway:
        configured = load_settings(kg_llm_url=gateway.url, kg_llm_max_tokens=16)
        with pytest.raises(ExtractionError, match="serving/client-key"):
            LLMExtractor.from_settings(configured)
        monkeypatch.setenv("SUTAZAI_SECRET_SERVING_CLIENT_KEY", key)
        extractor = LLMExtractor.from_settings(configured)
        text = "Ada Lovelace worked in London."
        found = extractor.extract_one(Chunk(id="d:0", document="d", index=0, start=0,
                                            end=len(text), text=text))
        assert found.skipped in (0, 1)  # answered (a weak base model may answer badly)
    assert not [r for r in open_audit_log(settings).records()
                if r.action == "access.denied" and r.actor.startswith("key:")]
