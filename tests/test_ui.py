"""The local stack as a person uses it: ``make up``, then the Airflow and MLflow web UIs in a
real headless Chromium (Debian's, driven by Playwright), against real servers on 127.0.0.1.

Screenshots land in ``test-artifacts/ui/`` for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from sutazai.config import Settings, load_settings
from sutazai.registry import open_registry
from sutazai.registry.task_aliases import CHAMPION, TaskAliases
from sutazai.repository import open_repository
from sutazai.security.access import KeyStore, new_key
from sutazai.serving.process import free_port
from sutazai.workflows.mirror import mirror_catalog
from sutazai_stack import services as stack
from tests.conftest import smollm2_entry
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
    """`SUTAZAI_PROFILE=production make up` on free ports, with the spaCy model as the whole
    catalog (a quick cycle): the stack's own PostgreSQL and Redis, MLflow and Airflow on
    PostgreSQL. Its cluster lives outside pytest's 0700 temp root, which the postgres user
    could not reach."""
    for name in ("AIRFLOW", "MLFLOW", "PROMETHEUS", "PUSHGATEWAY", "POSTGRES", "REDIS"):
        monkeypatch.setenv(f"SUTAZAI_{name}_PORT", str(free_port()))
    monkeypatch.setenv("SUTAZAI_SERVE_PORT", str(free_ports_in_a_row(1 + stack.REPLICAS)))
    postgres_dir = Path(tempfile.mkdtemp(prefix="sutazai-pg-"))
    postgres_dir.chmod(0o755)
    request_cleanup = postgres_dir
    monkeypatch.setenv("SUTAZAI_PROFILE", "production")
    monkeypatch.setenv("SUTAZAI_POSTGRES_DIR", str(postgres_dir / "data"))
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
        shutil.rmtree(request_cleanup, ignore_errors=True)
        if started.returncode != 0:
            for name in ("postgres", "redis", "mlflow", "airflow", "prometheus", "pushgateway"):
                log = stack.log_file(settings, name)
                if log.exists():
                    sys.stderr.write(f"--- {name}\n{log.read_text()[-3000:]}\n")


def free_ports_in_a_row(count: int) -> int:
    """The first of ``count`` consecutive free ports (nginx, then each replica)."""
    for _ in range(100):
        first = free_port()
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError(f"no {count} free ports in a row")


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
def test_airflow_and_mlflow_uis_show_the_nightly_cycle(
        running_stack: Settings, smollm2_gguf: Path, write_catalog: Callable[..., Path]) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "run scripts/install-system-deps.sh (Debian's chromium)"
    SHOTS.mkdir(parents=True, exist_ok=True)
    settings = running_stack
    airflow = f"http://127.0.0.1:{settings.airflow_port}"
    mlflow = f"http://127.0.0.1:{settings.mlflow_port}"
    password = stack.admin_password(settings)
    status = stack_command("status")
    # postgres, redis, mlflow, prometheus, pushgateway, airflow; no replica without a champion
    assert status.returncode == 0 and status.stdout.count(" ok ") == 6, status.stdout

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
        # a second DAG at the same time: the LocalExecutor on PostgreSQL runs both at once
        ingest_id = trigger(airflow, password, "sutazai_knowledge_ingest")
        state = wait_for_run(airflow, password, "sutazai_nightly", run_id, 600)
        assert state == "success", sorted(Path(settings.home / "airflow" / "logs").rglob("*"))
        assert wait_for_run(airflow, password, "sutazai_knowledge_ingest", ingest_id, 300
                            ) == "success"
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
    assert overlapping_task_runs(settings) >= 1, "the two DAG runs' tasks never overlapped"

    # spaCy's NER champion runs in-process: no API replica serves it, so none was started
    assert "not started: no champion an API engine serves (ner only)" in " ".join(
        stack_command("up").stderr.split())
    # a chat champion (mirrored into the PostgreSQL-backed registry): make up again starts
    # the two serving replicas behind nginx, and a completion goes through
    write_catalog(spacy_entry(), smollm2_entry(smollm2_gguf))
    [pulled] = mirror_catalog(settings, ["smollm2-135m-instruct"])
    assert pulled.error is None and pulled.version == 1, pulled
    TaskAliases(open_registry(settings)).set(
        "chat", CHAMPION, open_repository(settings).get(pulled.name, 1), "llamacpp", 1)
    key, entry = new_key("ui-test", "operator")
    KeyStore(settings).add(entry)
    again = stack_command("up")
    assert again.returncode == 0 and "serve-2     started" in again.stderr, again.stderr
    status = stack_command("status")
    assert status.stdout.count(" ok ") == 9, status.stdout
    base = f"http://127.0.0.1:{settings.serve_port}/v1"
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(2):  # round-robin: each replica lists it
        listed = httpx.get(f"{base}/models", headers=headers, timeout=30)
        assert listed.status_code == 200 and "smollm2-135m-instruct" in listed.text
    answer = httpx.post(f"{base}/chat/completions", headers=headers, timeout=120, json={
        "model": "chat", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]


def trigger(base: str, password: str, dag_id: str) -> str:
    """Unpause and trigger ``dag_id`` through Airflow's REST API; the run's id."""
    token = httpx.post(f"{base}/auth/token", json={"username": stack.ADMIN,
                                                   "password": password}).json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    httpx.patch(f"{base}/api/v2/dags/{dag_id}", json={"is_paused": False},
                headers=headers).raise_for_status()
    answer = httpx.post(f"{base}/api/v2/dags/{dag_id}/dagRuns", headers=headers,
                        json={"logical_date": None, "conf": {}})
    answer.raise_for_status()
    return str(answer.json()["dag_run_id"])


def overlapping_task_runs(settings: Settings) -> int:
    """Pairs of task instances of different DAG runs that ran at the same time, from
    Airflow's metadata database in PostgreSQL."""
    import psycopg

    from sutazai.production.databases import database_password

    with psycopg.connect(host="127.0.0.1", port=settings.postgres_port, dbname="airflow",
                         user=settings.postgres_user,
                         password=database_password(settings)) as connection:
        found = connection.execute(
            "SELECT count(*) FROM task_instance a JOIN task_instance b ON a.dag_id < b.dag_id "
            "AND a.start_date < b.end_date AND b.start_date < a.end_date").fetchone()
    assert found is not None
    return int(found[0])
