"""Architecture search on the production profile: the Optuna study in PostgreSQL, shared by
worker processes, one of which is killed.

Real servers only: the session's PostgreSQL cluster (database ``sutazai_nas``, fresh for the
test, so the two workers also race to create Optuna's schema) and the session's MLflow
server over HTTP. What is read back is PostgreSQL's own rows, not a worker's report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sutazai.config import Settings, load_settings
from sutazai.production.postgres import LocalPostgres
from tests.learning.test_nas import ROOT, WORKER, _mlflow, write_space
from tests.servers import MlflowServer

N_TRIALS = 3  # two workers finish 3 trials: one of them starts a second, and dies in it

TRIALS = """
SELECT t.number, t.state::text, w.value_json
FROM trials t JOIN studies s ON s.study_id = t.study_id
LEFT JOIN trial_user_attributes w ON w.trial_id = t.trial_id AND w.key = 'worker'
WHERE s.study_name = %s ORDER BY t.number
"""
PARAMS = """
SELECT t.number, p.param_name, p.param_value FROM trial_params p
JOIN trials t ON t.trial_id = p.trial_id JOIN studies s ON s.study_id = t.study_id
WHERE s.study_name = %s
"""
RETRIES = """
SELECT t.number, t.state::text, a.value_json FROM trial_system_attributes a
JOIN trials t ON t.trial_id = a.trial_id JOIN studies s ON s.study_id = t.study_id
WHERE s.study_name = %s AND a.key = 'failed_trial'
"""


def _rows(cluster: LocalPostgres, query: str, study: str) -> list[tuple[Any, ...]]:
    """Rows of Optuna's tables in ``sutazai_nas``, read as the superuser."""
    connection = cluster.admin("sutazai_nas")
    try:
        return list(connection.execute(query, (study,)).fetchall())
    finally:
        connection.close()


# A worker that SIGKILLs itself at the end of the first epoch of its second trial, unless
# another worker already did: exactly one worker dies mid-trial, after finishing a trial,
# whatever the two processes' timing (a kill from outside would race with trials this short).
KILL_ONCE = """
import os, signal, sys
from sutazai.learning import tinylm
real_train, started = tinylm.train, []
def train(*args, on_epoch, **kwargs):
    started.append(1)
    def epoch_done(result):
        on_epoch(result)
        if len(started) == 2 and result.epoch == 1:
            try:
                token = os.open(sys.argv[5], os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                return
            os.write(token, sys.argv[4].encode())
            os.close(token)
            os.kill(os.getpid(), signal.SIGKILL)
    return real_train(*args, on_epoch=epoch_done, **kwargs)
tinylm.train = train
"""


def _worker(settings: Settings, space: Path, study: str, worker: int,
            token: Path) -> subprocess.Popen[str]:
    env = os.environ | {"SUTAZAI_HOME": str(settings.home),
                        "SUTAZAI_MLFLOW_TRACKING_URI": settings.tracking_uri}
    return subprocess.Popen(
        [sys.executable, "-c", KILL_ONCE + WORKER, str(space), study, str(N_TRIALS),
         str(worker), str(token)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study_and_a_killed_trial_is_retried(
        production: Settings, postgres_cluster: LocalPostgres, mlflow_server: MlflowServer,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUTAZAI_MLFLOW_TRACKING_URI", mlflow_server.url)
    settings = load_settings()
    assert settings.nas_storage.startswith("postgresql://sutazai@")  # no password in it
    space = write_space(tmp_path / "space.yaml", search={"pruner": "none", "heartbeat_s": 1})
    study, token = "pg-shared", tmp_path / "killed"
    # both start at once on an empty database: they also race to create Optuna's schema
    processes = [_worker(settings, space, study, w, token) for w in (0, 1)]
    outputs = [p.communicate(timeout=120) for p in processes]
    dead = int(token.read_text())
    victim, survivor = processes[dead], processes[1 - dead]
    assert victim.returncode == -signal.SIGKILL, outputs[dead][1]
    out, err = outputs[1 - dead]
    assert survivor.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["trials_finished"] == N_TRIALS
    assert not (settings.home / "nas.db").exists()  # the study never touched SQLite

    rows = _rows(postgres_cluster, TRIALS, study)
    states = {number: state for number, state, _ in rows}
    workers = {number: worker for number, _, worker in rows}
    [killed] = [number for number, state in states.items() if state == "FAIL"]
    assert workers[killed] == str(dead)
    # exactly the target done, the killed trial failed (by the survivor's heartbeat check), none
    # left running or waiting
    assert sorted(states.values()) == ["COMPLETE"] * N_TRIALS + ["FAIL"], rows
    assert {workers[n] for n, s in states.items() if s == "COMPLETE"} == {"0", "1"}
    assert sum(1 for n, s in states.items() if s == "COMPLETE" and workers[n] == str(1 - dead)
               ) == report["trials_run_here"]
    # re-queued once, with the killed trial's parameters, and done by the survivor
    retries = _rows(postgres_cluster, RETRIES, study)
    assert [(state, json.loads(value)) for _, state, value in retries] == [("COMPLETE", killed)]
    retried = retries[0][0]
    assert workers[retried] == str(1 - dead)
    params: dict[int, dict[str, float]] = {}
    for number, name, value in _rows(postgres_cluster, PARAMS, study):
        params.setdefault(number, {})[name] = value
    assert params[retried] == params[killed]
    # no trial evaluated twice: the completed ones all differ (the learning rate is a float,
    # so two honest draws never coincide) ...
    done = [tuple(sorted(params[n].items())) for n, s in states.items() if s == "COMPLETE"]
    assert len(set(done)) == N_TRIALS
    # ... and each trial number was started by one worker only (one MLflow child run each)
    client = _mlflow(settings)
    parent = client.get_run(report["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{report['mlflow_run_id']}'")
    numbers = [int(c.data.tags["sutazai.nas.trial"]) for c in children]
    assert len(numbers) == len(set(numbers))
    assert {n for n, s in states.items() if s == "COMPLETE"} <= set(numbers) <= set(states)


OPEN = """
import sys, time
from pathlib import Path
import optuna
from sutazai.config import Settings
from sutazai.learning import nas
made = []
real = optuna.storages.RDBStorage
def counted(*args, **kwargs):
    made.append(1)
    return real(*args, **kwargs)
optuna.storages.RDBStorage = counted
settings = Settings()
go = Path(sys.argv[1])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
nas._storage(settings, 1)
print(len(made))
"""


def test_workers_create_the_schema_of_a_fresh_database_one_at_a_time(
        production: Settings, tmp_path: Path) -> None:
    """Optuna creates its PostgreSQL schema without a lock: without the advisory lock of
    nas._storage, two of three processes released at once fail (UniqueViolation) and open
    the storage only on a retry. With it, each opens it on its first attempt."""
    go = tmp_path / "go"
    processes = [subprocess.Popen([sys.executable, "-c", OPEN, str(go)], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
    for process in processes:  # all imported and waiting: then released together
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
    go.touch()
    outputs = [p.communicate(timeout=60) for p in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
    assert [out.strip() for out, _ in outputs] == ["1", "1", "1"], outputs
