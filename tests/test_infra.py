"""infra/ checked offline: Prometheus rules and configs with the real promtool, manifests
against pinned Kubernetes schemas plus the policies review would otherwise enforce by eye,
dashboards against the metrics that exist (the gateway's) or are promised (the README's
contract), and the compose file and chart values for what must never be in them: secrets.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
PROM = INFRA / "prometheus"
K8S_BASE = INFRA / "k8s" / "base"
DASHBOARDS = INFRA / "grafana" / "dashboards"
KUBERNETES_VERSION = "1.33.0"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIAL)", re.I)
URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
INLINE_JSON_SECRET = re.compile(r'"(token|password|secret_id|secret)"\s*:\s*"', re.I)
METRIC = re.compile(r"\b(sutazai_[a-z0-9_]+)\b")
RECORDED = re.compile(r"\b([a-z_]+:sutazai_[a-z0-9_]+:[a-z0-9_]+)\b")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60, check=False)


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
            for path in sorted(K8S_BASE.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in load_all(path)]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc["kind"] == kind]


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, doc in manifests():
        spec = doc.get("spec", {})
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            found.append((name, spec["template"]["spec"]))
        elif doc["kind"] == "CronJob":
            found.append((name, spec["jobTemplate"]["spec"]["template"]["spec"]))
    return found


def walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every (dotted path, scalar) in a YAML/JSON tree."""
    if isinstance(node, dict):
        return [pair for key, value in node.items() for pair in walk(value, f"{path}.{key}")]
    if isinstance(node, list):
        return [pair for i, value in enumerate(node) for pair in walk(value, f"{path}[{i}]")]
    return [(path, node)]


def looks_secret(key: str, value: Any) -> bool:
    """A literal value under a secret-like key, or a credential embedded in a string.

    camelCase keys ending in Key/Secret/Name/File/Path (``passwordKey``,
    ``credentialsSecret``, ``passwordFromSecret``) and ``...-name``/``..._FILE`` keys name
    where a secret is, not the secret.
    """
    if not isinstance(value, str) or not value:
        return False
    if URL_WITH_PASSWORD.search(value) or INLINE_JSON_SECRET.search(value):
        return True
    reference = (re.search(r"[a-z](Key|Secret|Name|File|Path)$", key)
                 or re.search(r"(-(name|file|path)|_FILE)$", key))
    return bool(SECRET_NAME.search(key)) and not reference and "/run/secrets/" not in value


def plaintext_secrets(tree: Any) -> list[str]:
    """Paths of the scalars in ``tree`` that look like secret values."""
    found = []
    for path, value in walk(tree):
        key = re.split(r"[.\[]", path)[-1].split("__")[-1]  # AIRFLOW__SECTION__KEY -> KEY
        if looks_secret(key, value):
            found.append(path)
    return found


# --- metric names ---------------------------------------------------------------------------

def gateway_series() -> set[str]:
    """Series names the gateway exports, with the suffixes prometheus_client adds."""
    source = "\n".join(path.read_text() for path in (ROOT / "sutazai" / "serving").glob("*.py"))
    names: set[str] = set()
    for kind, name in re.findall(r"\b(Counter|Gauge|Histogram)\(\s*\"(sutazai_[a-z0-9_]+)\"",
                                 source):
        if kind == "Counter":
            names |= {f"{name}_total", f"{name}_created"}
        elif kind == "Histogram":
            names |= {name, *(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count",
                                                                 "created"))}
        else:
            names.add(name)
    return names


def contract() -> dict[str, tuple[str, set[str]]]:
    """The README's metric contract: name -> (type, labels)."""
    text = (INFRA / "README.md").read_text()
    block = text.split("<!-- metric-contract:begin -->")[1].split("<!-- metric-contract:end -->")[0]
    rows = {}
    for line in block.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`sutazai_"):
            continue
        rows[cells[0].strip("`")] = (cells[1], set(re.findall(r"`([a-z_]+)`", cells[2])))
    return rows


def contract_series() -> set[str]:
    names = set()
    for name, (kind, _) in contract().items():
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def recorded_names() -> set[str]:
    return {rule["record"] for group in yaml.safe_load((PROM / "recording.yml").read_text())
            ["groups"] for rule in group["rules"] if "record" in rule}


def rule_exprs() -> list[str]:
    return [rule["expr"] for path in (PROM / "recording.yml", PROM / "alerts.yml")
            for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def dashboard_panels() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        stack = list(board["panels"])
        while stack:
            panel = stack.pop(0)
            stack.extend(panel.get("panels", []))
            if panel["type"] != "row":
                found.append((f"{path.name}:{panel['title']}", panel))
    return found


def dashboard_exprs() -> list[str]:
    return [target["expr"] for _, panel in dashboard_panels() for target in panel["targets"]]


# --- Prometheus -----------------------------------------------------------------------------

def test_promtool_checks_the_rule_files() -> None:
    result = promtool("check", "rules", str(PROM / "recording.yml"), str(PROM / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass_and_cover_firing_and_silent_cases() -> None:
    test_files = sorted((PROM / "tests").glob("*_test.yml"))
    assert len(test_files) == 3
    result = promtool("test", "rules", *(str(f.relative_to(PROM)) for f in test_files),
                      cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    cases = [case for test_file in test_files
             for test in yaml.safe_load(test_file.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    silent = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    alerts = {rule["alert"] for group in yaml.safe_load((PROM / "alerts.yml").read_text())
              ["groups"] for rule in group["rules"] if "alert" in rule}
    assert firing == alerts, f"alerts never shown to fire: {alerts - firing}"
    for must_stay_silent in ("SutazAILatencyBudgetBurnFast", "SutazAIGatewayDown",
                             "SutazAINightlyFailed", "SutazAINightlyStale",
                             "SutazAIChampionNotServed"):
        assert must_stay_silent in silent
    # the healthy series in the multi-series groups are real (promtool matches exp_alerts
    # exactly, so a firing "sutazai-healthy" job would fail the run above)
    assert "sutazai-healthy" in (PROM / "tests" / "alerts_test.yml").read_text()


def test_promtool_unit_tests_cover_every_cost_rule() -> None:
    """Each cost recording rule has expected values in cost_test.yml (run above), and the
    case with no price expects every cost series to be absent, not zero."""
    groups = yaml.safe_load((PROM / "recording.yml").read_text())["groups"]
    cost_rules = {rule["record"] for group in groups if group["name"] == "sutazai-cost"
                  for rule in group["rules"]}
    costs = {name for name in cost_rules if "cost_per_1m" in name}
    assert len(costs) == 4, costs  # blended, output, input per model; the fleet's
    tests = yaml.safe_load((PROM / "tests" / "cost_test.yml").read_text())["tests"]
    checked = {name for test in tests for case in test["promql_expr_test"]
               for name in RECORDED.findall(case["expr"])}
    shown = {name for test in tests for case in test["promql_expr_test"]
             if case["exp_samples"] for name in RECORDED.findall(case["expr"])}
    assert costs <= shown
    assert checked <= cost_rules
    unpriced = next(test for test in tests if not any(
        "sutazai_hardware_cost_per_hour" in series["series"] for series in test["input_series"]))
    absent = {RECORDED.findall(case["expr"])[0] for case in unpriced["promql_expr_test"]
              if case["exp_samples"] == []}
    assert costs <= absent
    board = (DASHBOARDS / "sutazai-serving.json").read_text()
    assert all(name in board for name in costs)


def test_promtool_fails_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit test run above can fail: a test expecting a healthy series to page does."""
    for name in ("recording.yml", "alerts.yml"):
        shutil.copy(PROM / name, tmp_path / name)
    (tmp_path / "t.yml").write_text(yaml.safe_dump({
        "rule_files": ["recording.yml", "alerts.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [
            {"series": 'sutazai_request_duration_seconds_bucket{job="j",le="2.0"}',
             "values": "0+99x60"},
            {"series": 'sutazai_request_duration_seconds_count{job="j"}', "values": "0+100x60"}],
            "alert_rule_test": [{"eval_time": "30m", "alertname": "SutazAILatencyBudgetBurnFast",
                                 "exp_alerts": [{"exp_labels": {"job": "j"}}]}]}]}))
    result = promtool("test", "rules", "t.yml", cwd=tmp_path)
    assert result.returncode != 0


def test_prometheus_configs_are_valid(tmp_path: Path) -> None:
    key_file = tmp_path / "metrics-key"  # stands in for the mounted viewer API key
    key_file.write_text("sk-sutazai-000000000000.placeholder-placeholder")

    def swap(node: Any) -> None:
        if isinstance(node, dict):
            if node.pop("kubernetes_sd_configs", None) is not None:
                node["static_configs"] = [{"targets": ["placeholder:9"]}]
            if "credentials_file" in node:
                node["credentials_file"] = str(key_file)
            for value in node.values():
                swap(value)
        elif isinstance(node, list):
            for value in node:
                swap(value)

    compose = yaml.safe_load((PROM / "prometheus-compose.yml").read_text())
    swap(compose)
    for name in compose["rule_files"]:
        shutil.copy(PROM / name, tmp_path / name)
    (tmp_path / "compose.yml").write_text(yaml.safe_dump(compose))
    result = promtool("check", "config", str(tmp_path / "compose.yml"))
    assert result.returncode == 0, result.stdout + result.stderr

    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["sutazai-pushgateway"]["honor_labels"] is True
    assert jobs["sutazai-serving"]["authorization"]["type"] == "Bearer"  # /metrics needs a key
    relabel_targets = {rule.get("target_label") for rule in jobs["sutazai-serving"]
                       ["relabel_configs"]}
    assert {"namespace", "pod"} <= relabel_targets  # prometheus-adapter maps these to objects
    swap(config)
    for name in config["rule_files"]:
        shutil.copy(PROM / name, tmp_path / name)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_used_exists_or_is_in_the_contract() -> None:
    known = gateway_series() | contract_series()
    assert {"sutazai_requests_total", "sutazai_request_duration_seconds_bucket",
            "sutazai_requests_in_flight", "sutazai_model_info"} <= known
    recorded = recorded_names()
    exprs = rule_exprs() + dashboard_exprs()
    used = {name for expr in exprs for name in METRIC.findall(RECORDED.sub("", expr))}
    assert used - known == set(), "used in rules/dashboards but neither exported nor in " \
        f"infra/README.md's metric contract: {sorted(used - known)}"
    missing_records = {name for expr in exprs for name in RECORDED.findall(expr)} - recorded
    assert not missing_records, missing_records
    # the contract is not padded: every promised metric is used somewhere
    unused = set(contract()) - {name for name in used}
    assert not unused, f"contract metrics no rule or dashboard uses: {sorted(unused)}"


def test_contract_names_are_prometheus_idiomatic() -> None:
    rows = contract()
    assert rows
    for name, (kind, labels) in rows.items():
        assert re.fullmatch(r"sutazai_[a-z0-9_]+", name), name
        assert kind in ("gauge", "counter", "histogram"), (name, kind)
        assert name.endswith("_total") == (kind == "counter"), name
        assert not name.endswith(("_bucket", "_count", "_sum")), name
        if "timestamp" in name or "duration" in name:
            assert name.endswith("_seconds"), name
        assert not labels & {"job", "instance", "le"}, name


def test_contract_labels_match_their_use() -> None:
    """A label matcher on a contract metric uses a label the contract gives it."""
    rows = contract()
    for expr in rule_exprs() + dashboard_exprs():
        for name, matchers in re.findall(r"\b(sutazai_[a-z0-9_]+)\{([^}]*)\}", expr):
            if name not in rows:
                continue
            used = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers)) - {"job"}
            assert used <= rows[name][1], (name, used)


# --- Grafana --------------------------------------------------------------------------------

def test_dashboards_have_what_grafana_needs() -> None:
    boards = [json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))]
    assert {board["uid"] for board in boards} == {
        "sutazai-serving", "sutazai-pipelines", "sutazai-repository-graph"}
    for board in boards:
        assert board["title"] and isinstance(board["schemaVersion"], int)
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids))
    for name, panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "${datasource}", name
        assert panel["targets"], name
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], name
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), name


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses each panel query (Grafana's variables filled in) as a rule."""
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        concrete = (expr.replace("$__rate_interval", "5m").replace("$job", ".*")
                    .replace("$pipeline", ".*"))
        assert "$" not in concrete, expr
        rules.append({"record": f"dashboard:query_{i}:check", "expr": concrete})
    (tmp_path / "dashboards.yml").write_text(yaml.safe_dump(
        {"groups": [{"name": "dashboards", "rules": rules}]}))
    result = promtool("check", "rules", str(tmp_path / "dashboards.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_serving_dashboard_covers_the_serving_signals() -> None:
    board = json.loads((DASHBOARDS / "sutazai-serving.json").read_text())
    text = json.dumps(board)
    for needle in ("histogram_quantile(0.5,", "histogram_quantile(0.95,",
                   "histogram_quantile(0.99,", "sutazai_time_to_first_token_seconds_bucket",
                   "sutazai_output_tokens_total", "sutazai_requests_in_flight",
                   'status=~\\"5..|stream_cut\\"', "sutazai_model_info",
                   "sutazai_model_swaps_total"):
        assert needle in text, needle


# --- Kubernetes -----------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "doc"), manifests(), ids=[name for name, _ in manifests()])
def test_manifest_is_valid_for_the_pinned_kubernetes(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_a_typo() -> None:
    deployment = by_kind("Deployment")[0]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    files = {path.name for path in K8S_BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_every_container_is_locked_down_and_sized() -> None:
    specs = pod_specs()
    assert specs
    for name, spec in specs:
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, name
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        for container in spec["containers"] + spec.get("initContainers", []):
            where = f"{name}/{container['name']}"
            security = container.get("securityContext", {})
            assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("privileged", False) is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not security.get("capabilities", {}).get("add"), where
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), (where, kind)
            assert ":" in container["image"] and not container["image"].endswith(":latest")


def test_serving_runs_vllm_on_a_gpu_with_health_probes() -> None:
    deployment = next(d for d in by_kind("Deployment") if d["metadata"]["name"] ==
                      "sutazai-serving")
    spec = deployment["spec"]["template"]["spec"]
    gateway = spec["containers"][0]
    assert gateway["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--engine vllm" in " ".join(gateway.get("command", []) + gateway.get("args", []))
    assert spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    # liveness asks only whether the gateway answers; readiness (and startup) whether the
    # engine answers or is busy (sutazai.serving.gateway)
    probes = {probe: gateway[probe]["httpGet"]["path"]
              for probe in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes == {"readinessProbe": "/health/ready", "livenessProbe": "/health/live",
                      "startupProbe": "/health/ready"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["vault.hashicorp.com/agent-inject"] == "true"
    assert annotations["vault.hashicorp.com/role"]
    assert spec["serviceAccountName"] in {d["metadata"]["name"] for d in
                                          by_kind("ServiceAccount")}


def test_hpa_and_pdb_target_the_serving_deployment() -> None:
    deployment = next(d for d in by_kind("Deployment") if d["metadata"]["name"] ==
                      "sutazai-serving")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = by_kind("HorizontalPodAutoscaler")[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "sutazai-serving"}
    pod_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]
                   if m["type"] == "Pods"}
    assert "sutazai_requests_in_flight" in pod_metrics
    adapter = yaml.safe_load((INFRA / "values" / "prometheus-adapter.yaml").read_text())
    assert pod_metrics <= {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    pdb = by_kind("PodDisruptionBudget")[0]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = next(s for s in by_kind("Service") if s["metadata"]["name"] == "sutazai-serving")
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_network_policies_deny_by_default_and_allow_only_mlflow_and_vault() -> None:
    policies = by_kind("NetworkPolicy")
    default_deny = [p for p in policies if p["spec"]["podSelector"] == {}
                    and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
                    and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert default_deny
    egress_namespaces = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                         for p in policies for rule in p["spec"].get("egress", [])
                         for peer in rule["to"]}
    assert egress_namespaces == {"kube-system", "mlflow", "vault"}  # DNS, MLflow, Vault
    ingress_ports = {port["port"] for p in policies for rule in p["spec"].get("ingress", [])
                     for port in rule["ports"]}
    assert ingress_ports == {8000}


def test_no_plaintext_secrets_in_manifests() -> None:
    for name, doc in manifests():
        assert not (doc["kind"] == "Secret" and (doc.get("data") or doc.get("stringData"))), name
        assert not plaintext_secrets(doc), (name, plaintext_secrets(doc))
    for _, spec in pod_specs():
        for container in spec["containers"]:
            for env in container.get("env", []):
                # SUTAZAI_SECRETS_* say where secrets are (provider, Vault role), not what
                setting = re.fullmatch(r"SUTAZAI_SECRETS_(PROVIDER|VAULT_[A-Z_]+_FILE|"
                                       r"VAULT_(AUTH|ROLE|ADDR|MOUNT|PATH))", env["name"])
                if "value" in env and not setting:
                    assert not SECRET_NAME.search(env["name"]), env
    # the detector itself finds what it must
    assert plaintext_secrets({"env": [{"DB_PASSWORD": "hunter2"}]})
    assert plaintext_secrets({"url": "postgresql://u:hunter2@db/x"})
    assert plaintext_secrets({"AIRFLOW__SECRETS__BACKEND_KWARGS": '{"token": "s.abc"}'})
    assert plaintext_secrets({"API_KEY": "abc"})
    assert not plaintext_secrets({"AIRFLOW__SECRETS__BACKEND": "airflow.providers.x.Backend"})
    assert not plaintext_secrets({"passwordKey": "password", "passwordFromSecret": "neo4j-auth"})


def test_service_monitor_selects_the_serving_service() -> None:
    monitor = yaml.safe_load((INFRA / "k8s" / "monitoring" / "servicemonitor.yaml").read_text())
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = next(s for s in by_kind("Service") if s["metadata"]["name"] == "sutazai-serving")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    port_names = {port["name"] for port in service["spec"]["ports"]}
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= port_names
    assert any(r.get("replacement") == "sutazai-serving"
               for e in monitor["spec"]["endpoints"] for r in e.get("relabelings", []))


# --- compose and chart values ---------------------------------------------------------------

def test_compose_services_are_healthchecked_and_keep_secrets_out() -> None:
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert {"gateway", "mlflow", "airflow", "prometheus", "grafana", "openbao",
            "falkordb"} <= set(services)
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), name
        assert not plaintext_secrets(service.get("environment", {})), name
        for command in (service.get("command"), service.get("healthcheck", {}).get("test")):
            assert not plaintext_secrets({"command": " ".join(command or [])}), name
    devices = services["gateway"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    # everything compose mounts from the repository exists (secrets are made on the server)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (INFRA / source).exists(), (name, source)
    ignore = (INFRA / "secrets" / ".gitignore").read_text().split()
    assert ignore[0] == "*"


def test_chart_values_parse_and_airflow_reads_secrets_from_vault() -> None:
    values = {path.stem: yaml.safe_load(path.read_text())
              for path in sorted((INFRA / "values").glob("*.yaml"))}
    assert {"airflow", "mlflow", "neo4j", "prometheus-adapter"} <= set(values)
    for name, tree in values.items():
        assert not plaintext_secrets(tree), (name, plaintext_secrets(tree))
    airflow = values["airflow"]
    assert airflow["executor"] in ("KubernetesExecutor", "CeleryExecutor")
    assert airflow["dags"]["gitSync"]["enabled"] is True
    secrets = airflow["config"]["secrets"]
    assert secrets["backend"] == "airflow.providers.hashicorp.secrets.vault.VaultBackend"
    kwargs = json.loads(secrets["backend_kwargs"])
    assert kwargs["url"].startswith("http") and kwargs["auth_type"] == "kubernetes"
    mlflow = values["mlflow"]
    assert mlflow["backendStore"]["postgres"]["enabled"] is True
    assert mlflow["artifactRoot"]["s3"]["enabled"] is True
    assert values["neo4j"]["neo4j"]["passwordFromSecret"]


def test_the_local_stack_scrapes_the_gateway_with_a_viewer_key_and_the_pushgateway(
        tmp_path: Path) -> None:
    """make up's Prometheus: a valid config with infra's rules, a viewer key (0600) that
    the key table knows, and the Pushgateway scraped with honor_labels."""
    from sutazai.config import load_settings
    from sutazai.security.access import KeyStore, Principal, authenticate
    from sutazai_stack import services as stack

    settings = load_settings(home=tmp_path / ".sutazai")
    stack.write_prometheus_config(settings)
    stack.write_prometheus_config(settings)  # idempotent: one key, not two
    config_file = stack.stack_dir(settings) / "prometheus.yml"
    result = promtool("check", "config", str(config_file))
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {job["job_name"]: job for job in json.loads(config_file.read_text())
            ["scrape_configs"]}
    key_file = Path(jobs["sutazai-serving"]["authorization"]["credentials_file"])
    assert key_file.stat().st_mode & 0o077 == 0
    table = KeyStore(settings).load()
    assert len(table.keys) == 1
    found = authenticate(table, key_file.read_text())
    assert isinstance(found, Principal) and found.role == "viewer"
    assert jobs["sutazai-pushgateway"]["honor_labels"] is True
    assert "SUTAZAI_PUSHGATEWAY_URL" in stack.airflow_environment(settings)
