"""The local stack as a person uses it: ``make up``, then the Airflow and MLflow web UIs in a
real headless Chromium (Debian's, driven by Playwright), against real servers on 127.0.0.1.

Screenshots land in ``test-artifacts/ui/`` for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sutazai.config import Settings, load_settings
from sutazai.serving.process import free_port
from sutazai_stack import services as stack
from tests.helpers import spacy_entry

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-artifacts" / "ui"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
DAG_IDS = ["sutazai_benchmark", "sutazai_knowledge_ingest", "sutazai_model_sync",
           "sutazai_nightly"]


def stack_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sutazai_stack", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=400)


@pytest.fixture
def running_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  write_catalog: Callable[..., Path]) -> Iterator[Settings]:
    """`make up` on free ports, with the spaCy model as the whole catalog (a quick cycle)."""
    for name in ("AIRFLOW", "MLFLOW", "PROMETHEUS", "PUSHGATEWAY"):
        monkeypatch.setenv(f"SUTAZAI_{name}_PORT", str(free_port()))
    monkeypatch.setenv("SUTAZAI_VLLM_VENV", str(tmp_path / "no-vllm"))
    monkeypatch.setenv("SUTAZAI_BENCHMARK_PROFILE", "smoke")
    write_catalog(spacy_entry())
    settings = load_settings()
    started = stack_command("up")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield settings
    finally:
        stack_command("down")
        if started.returncode != 0:
            for name in ("mlflow", "airflow", "prometheus", "pushgateway"):
                log = stack.log_file(settings, name)
                if log.exists():
                    sys.stderr.write(f"--- {name}\n{log.read_text()[-3000:]}\n")


def wait_for_run(base: str, password: str, dag_id: str, run_id: str, timeout_s: float) -> str:
    """Poll Airflow's REST API until the run ends; its final state."""
    token = httpx.post(f"{base}/auth/token", json={"username": stack.ADMIN,
                                                   "password": password}).json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    deadline = time.monotonic() + timeout_s
    state = "unknown"
    while time.monotonic() < deadline:
        answer = httpx.get(f"{base}/api/v2/dags/{dag_id}/dagRuns/{run_id}", headers=headers)
        state = answer.json().get("state", "unknown") if answer.status_code == 200 else state
        if state in ("success", "failed"):
            return state
        time.sleep(3)
    return state


@pytest.mark.slow
def test_airflow_and_mlflow_uis_show_the_nightly_cycle(running_stack: Settings) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "run scripts/install-system-deps.sh (Debian's chromium)"
    SHOTS.mkdir(parents=True, exist_ok=True)
    settings = running_stack
    airflow = f"http://127.0.0.1:{settings.airflow_port}"
    mlflow = f"http://127.0.0.1:{settings.mlflow_port}"
    password = stack.admin_password(settings)
    status = stack_command("status")
    assert status.returncode == 0 and status.stdout.count(" ok ") == 4, status.stdout

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(30_000)

        page.goto(airflow)
        page.fill("input[name=username]", stack.ADMIN)
        page.fill("input[name=password]", password)
        page.get_by_role("button", name="Sign in").click()
        # the login page redirects once signed in; a goto during that redirect is aborted
        page.wait_for_url(lambda url: "/auth/" not in url)
        page.goto(f"{airflow}/dags")
        for dag_id in DAG_IDS:
            expect(page.get_by_text(dag_id, exact=True)).to_be_visible()
        page.screenshot(path=SHOTS / "1-airflow-dags.png")

        page.goto(f"{airflow}/dags/sutazai_nightly")
        page.get_by_role("button", name="Trigger Dag").click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_text("Unpause sutazai_nightly on trigger")).to_be_visible()
        dialog.get_by_role("button", name="Trigger", exact=True).click()
        page.wait_for_url("**/dags/sutazai_nightly/runs/**")
        run_id = page.url.rsplit("/runs/", 1)[1].split("/")[0].split("?")[0]
        state = wait_for_run(airflow, password, "sutazai_nightly", run_id, 600)
        assert state == "success", sorted(Path(settings.home / "airflow" / "logs").rglob("*"))
        page.reload()
        expect(page.get_by_text(re.compile("^success$", re.IGNORECASE)).first).to_be_visible()
        expect(page.get_by_text("nightly_cycle").first).to_be_visible()
        page.screenshot(path=SHOTS / "2-airflow-nightly-run.png")

        page.goto(f"{mlflow}/#/models/task.ner")
        expect(page.get_by_text("champion").first).to_be_visible(timeout=60_000)
        page.screenshot(path=SHOTS / "3-mlflow-champion.png")
        browser.close()

    report = json.loads((settings.home / "reports" / "nightly-latest.json").read_text())
    assert report["selections"][0]["champion"]["model"] == "en-core-web-sm"
    assert os.path.getsize(SHOTS / "3-mlflow-champion.png") > 10_000
