"""A real Prometheus Pushgateway (Debian's ``prometheus-pushgateway``) on 127.0.0.1, and a
Prometheus that scrapes it the way ``infra/prometheus/prometheus.yml`` does (``honor_labels``)
with the repository's recording and alerting rules loaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import urllib3
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import Prometheus, ServerProcess

RULES = Path(__file__).resolve().parent.parent / "infra" / "prometheus"


class Pushgateway(ServerProcess):
    """``prometheus-pushgateway`` in memory (no persistence file), admin API on."""

    name = "pushgateway"
    health_path = "/-/ready"

    def command(self) -> list[str]:
        return [shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway",
                f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-admin-api",
                "--log.level=warn"]

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of ``/metrics`` as {(name, labels): value}; empty labels (the
        Pushgateway's ``instance=""``) are dropped, as Prometheus drops them."""
        text = urllib3.request("GET", f"{self.url}/metrics").data.decode()
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = frozenset((k, v) for k, v in sample.labels.items() if v)
                found[(sample.name, key)] = sample.value
        return found

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        """The samples of metric ``name``: {labels: value}."""
        return {labels: value for (metric, labels), value in self.samples().items()
                if metric == name}

    def wipe(self) -> None:
        """Delete every group (admin API)."""
        answer = urllib3.request("PUT", f"{self.url}/api/v1/admin/wipe")
        assert answer.status == 202, answer.data


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


class RulesPrometheus(Prometheus):
    """Prometheus scraping a Pushgateway every second with ``honor_labels: true`` (as in
    infra/prometheus/prometheus.yml) and evaluating infra's recording and alerting rules."""

    def __init__(self, workdir: Path, pushgateway: str) -> None:
        super().__init__(workdir, [pushgateway])
        self.config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES / "recording.yml"), str(RULES / "alerts.yml")],
            "scrape_configs": [{"job_name": "sutazai-pushgateway", "honor_labels": True,
                                "static_configs": [{"targets": [pushgateway]}]}],
        }))
