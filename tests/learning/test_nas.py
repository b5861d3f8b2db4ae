"""Architecture search: real (tiny) Optuna studies on SQLite, real MLflow, real training.

Every study here trains Llamas of a few thousand parameters for a handful of batches on
one thread; what is asserted is the study's bookkeeping (RDB, MLflow, repository), pruning,
resuming after a kill and sharing a study between processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from sutazai.config import Settings
from sutazai.errors import NotFoundError, TrainingError
from sutazai.learning.nas import data_digest, load_space, register_best, run_study, show_study
from sutazai.learning.nas_report import pareto_front
from sutazai.learning.search_space import SearchSpace, resolve_heads
from tests.tiny_llama import _corpus

ROOT = Path(__file__).resolve().parents[2]
TEXTS = _corpus(3, 240)
TRAIN, HELD = TEXTS[:216], TEXTS[216:]


def space_dict(**overrides: Any) -> dict[str, Any]:
    space: dict[str, Any] = {
        "kind": "architecture",
        "params": {
            "num_hidden_layers": {"type": "int", "low": 1, "high": 2},
            "hidden_size": {"type": "categorical", "choices": [16, 32]},
            "num_attention_heads": {"type": "categorical", "choices": [1, 2]},
            "intermediate_size": {"type": "categorical", "choices": [32, 64]},
            "learning_rate": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
        },
        "training": {"epochs": 2, "batch_size": 8, "seq_len": 32, "vocab_size": 320,
                     "max_batches_per_epoch": 4},
        "search": {"sampler": "tpe", "pruner": "hyperband", "startup_trials": 2,
                   "heartbeat_s": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(space.get(key), dict):
            space[key] = {**space[key], **value}
        else:
            space[key] = value
    return space


def write_space(path: Path, **overrides: Any) -> Path:
    path.write_text(yaml.safe_dump(space_dict(**overrides)))
    return path


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the module: creating its tables takes seconds each time."""
    return f"sqlite:///{tmp_path_factory.mktemp('nas-mlflow') / 'mlflow.db'}"


@pytest.fixture
def nas_settings(tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
                 ) -> Settings:
    monkeypatch.setenv("SUTAZAI_MLFLOW_TRACKING_URI", tracking_uri)
    return Settings(home=tmp_path / ".sutazai", catalog=tmp_path / "catalog.yaml",
                    mlflow_tracking_uri=tracking_uri)


def _optuna_study(settings: Settings, name: str) -> Any:
    """Optuna creates the schema when it opens storage: a poll while a worker creates it
    takes the same setup lock the workers take, or the two race on alembic_version."""
    import optuna

    from sutazai.embedded_db import first_use_of

    with first_use_of(settings.nas_storage, "the NAS study storage"):
        return optuna.load_study(study_name=name, storage=settings.nas_storage)


def _mlflow(settings: Settings) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


# ------------------------------------------------------------------------ the space file
def test_default_space_file_is_valid() -> None:
    space = load_space(ROOT / "models" / "nas-space.yaml")
    assert space.kind == "architecture"
    assert set(space.distributions()) >= {"num_hidden_layers", "hidden_size", "learning_rate"}


@pytest.mark.parametrize(("change", "expected"), [
    ({"params": {"hidden_size": {"type": "categorical", "choices": [32], "step": 2}}},
     "hidden_size.step: Extra inputs are not permitted"),
    ({"params": {"learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}},
     "learning_rate: low (0.1) is above high (0.01)"),
    ({"params": {"learning_rate": {"type": "float", "low": 0, "high": 0.01, "log": True}}},
     "learning_rate: a log-scale float needs low > 0"),
    ({"params": {"num_hidden_layers": {"type": "integer", "low": 1, "high": 2}}},
     "num_hidden_layers"),
    ({"params": {"hidden_size": {"type": "categorical", "choices": [33]}}},
     "hidden_size 33 has no valid num_attention_heads"),
    ({"params": {"lora_r": {"type": "categorical", "choices": [4, 8]}}},
     "unknown parameter(s) lora_r for kind architecture (LoRA knobs need kind: lora)"),
    ({"training": {"epochs": 0}}, "training.epochs: Input should be greater than or equal to 1"),
    ({"search": {"pruner": "sometimes"}}, "search.pruner: Input should be 'hyperband'"),
])
def test_bad_space_names_the_key(tmp_path: Path, change: dict[str, Any], expected: str) -> None:
    data = space_dict()
    for section, values in change.items():
        data[section] = {**data[section], **values}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(TrainingError) as caught:
        load_space(path)
    assert expected in str(caught.value)
    assert str(path) in str(caught.value)


def test_missing_parameters_and_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="does not exist"):
        load_space(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("params: [unclosed")
    with pytest.raises(TrainingError, match="not valid YAML"):
        load_space(tmp_path / "broken.yaml")
    data = space_dict()
    del data["params"]["intermediate_size"]
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(TrainingError, match=r"needs parameter\(s\) intermediate_size"):
        load_space(tmp_path / "short.yaml")


def test_lora_space_is_declared_but_not_searched_here(nas_settings: Settings) -> None:
    space = SearchSpace.model_validate({
        "kind": "lora", "base_model": "gemma3-270m-hf",
        "params": {"lora_r": {"type": "categorical", "choices": [4, 8, 16]},
                   "lora_alpha": {"type": "categorical", "choices": [8, 16, 32]},
                   "lora_dropout": 0.05,
                   "lora_target_modules": {"type": "categorical",
                                           "choices": ["q_proj,v_proj", "q_proj,k_proj,v_proj"]},
                   "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}})
    assert space.fixed() == {"lora_dropout": 0.05}
    with pytest.raises(TrainingError, match="kind lora"):
        run_study(nas_settings, space, TRAIN, HELD, study_name="lora", n_trials=1)


def test_heads_are_resolved_to_even_divisors() -> None:
    space = SearchSpace.model_validate(space_dict(params={
        "hidden_size": {"type": "categorical", "choices": [24, 32]},
        "num_attention_heads": {"type": "categorical", "choices": [1, 2, 3, 4]}}))
    assert resolve_heads(space, 32, 4) == 4
    assert resolve_heads(space, 24, 4) == 4  # 24 / 4 = 6, even
    assert resolve_heads(space, 24, 3) == 3  # 24 / 3 = 8, even
    assert resolve_heads(space, 32, 3) == 4  # 2 and 4 are as near: the larger
    space = SearchSpace.model_validate(space_dict(params={
        "hidden_size": {"type": "categorical", "choices": [20]},
        "num_attention_heads": {"type": "categorical", "choices": [1, 2, 4]}}))
    assert resolve_heads(space, 20, 4) == 2  # 20 / 4 = 5 is odd: rotary needs pairs


# ------------------------------------------------------------------------------ studies
@pytest.mark.slow
def test_study_runs_records_trials_and_registers_best(nas_settings: Settings,
                                                      tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path / "space.yaml"))
    report = run_study(nas_settings, space, TRAIN, HELD, study_name="basic", n_trials=4)
    assert report.trials_finished == 4 == report.trials_run_here
    assert report.trials_failed == 0 and report.trials_running == 0
    assert report.best_value is not None and report.best_value < 6.0  # ln(320) = 5.77
    stored = _optuna_study(nas_settings, "basic")
    assert len(stored.trials) == 4
    assert stored.best_trial.number == report.best_trial
    assert report.trial_epochs == sum(t.user_attrs["epochs"] for t in stored.trials)
    # the front: no completed trial beats a front member on both axes
    done = [t for t in report.trials if t.state == "COMPLETE"]
    for member in report.pareto_front:
        assert not any(t.val_loss < member.val_loss and t.n_params < member.second  # type: ignore[operator]
                       for t in done)
    assert report.pareto_front[0].trial == report.best_trial

    client = _mlflow(nas_settings)
    parent = client.get_run(report.mlflow_run_id)
    assert parent.data.tags["sutazai.nas.study"] == "basic"
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(report.mlflow_run_id)}
    assert {"pareto_front.png", "optimization_history.png", "pareto_front.json"} <= artifacts
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{report.mlflow_run_id}'")
    assert len(children) == 4
    child = next(c for c in children if c.data.tags["sutazai.nas.trial"] == "0")
    assert child.data.params["hidden_size"] in ("16", "32")
    assert child.data.metrics["n_params"] == stored.trials[0].user_attrs["n_params"]
    history = client.get_metric_history(child.info.run_id, "val_loss")
    assert [m.step for m in history] == list(range(1, stored.trials[0].user_attrs["epochs"] + 1))

    # resuming a study that holds its target runs nothing
    again = run_study(nas_settings, space, TRAIN, HELD, study_name="basic", n_trials=4)
    assert again.trials_run_here == 0 and again.trials_finished == 4
    # asking for more runs only the difference
    more = run_study(nas_settings, space, TRAIN, HELD, study_name="basic", n_trials=5)
    assert more.trials_run_here == 1 and more.trials_finished == 5
    assert show_study(nas_settings, "basic").trials_finished == 5

    # other texts or another space cannot resume it
    with pytest.raises(TrainingError, match="other texts"):
        run_study(nas_settings, space, TRAIN[1:], HELD, study_name="basic", n_trials=6)
    other = SearchSpace.model_validate(space_dict(training={"epochs": 3}))
    with pytest.raises(TrainingError, match="another search space"):
        run_study(nas_settings, other, TRAIN, HELD, study_name="basic", n_trials=6)

    best = show_study(nas_settings, "basic")
    manifest = register_best(nas_settings, "basic", space, TRAIN, HELD)
    assert manifest.name == "nas-basic"
    assert manifest.source == f"nas:basic#{best.best_trial}"
    assert manifest.revision == data_digest(TRAIN, HELD)
    assert manifest.format == "safetensors" and manifest.tasks == ["text-generation"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {
        f.path for f in manifest.files}
    versions = client.search_model_versions("name = 'nas-basic'")
    assert [v.tags["sutazai.source"] for v in versions] == [manifest.source]
    tags = client.get_run(report.mlflow_run_id).data.tags
    assert tags["sutazai.nas.registered"] == manifest.ref
    assert tags["sutazai.nas.registered_digest"] == manifest.digest
    # deterministic retrain: the registered model scores what its trial scored
    retrained = client.get_run(report.mlflow_run_id).data.metrics["registered_val_loss"]
    assert retrained == pytest.approx(best.best_value, rel=1e-4)
    assert show_study(nas_settings, "basic").registered == manifest.ref

    from transformers import AutoModelForCausalLM

    from sutazai.repository import open_repository

    folder = open_repository(nas_settings).ensure_snapshot(manifest)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.hidden_size == best.best_params["hidden_size"]


def test_pruning_stops_hopeless_trials(nas_settings: Settings) -> None:
    """A learning rate of 1e-6 cannot compete with 3e-2 after one epoch: with the median
    pruner the slow trials must be stopped, and their epochs not spent."""
    space = SearchSpace.model_validate(space_dict(
        params={"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
                "intermediate_size": 64,
                "learning_rate": {"type": "categorical", "choices": [3e-2, 1e-6]}},
        training={"epochs": 3},
        search={"sampler": "random", "pruner": "median", "startup_trials": 1, "seed": 1}))
    report = run_study(nas_settings, space, TRAIN, HELD, study_name="prune", n_trials=6)
    assert report.trials_finished == 6
    pruned = [t for t in report.trials if t.state == "PRUNED"]
    assert pruned, [(t.params, t.state) for t in report.trials]
    assert all(t.params["learning_rate"] == 1e-6 and t.epochs < 3 for t in pruned)
    assert report.trial_epochs < 6 * 3
    assert report.best_params["learning_rate"] == 3e-2


def test_pareto_mode_is_multi_objective(nas_settings: Settings) -> None:
    space = SearchSpace.model_validate(space_dict(search={"sampler": "nsga2"}))
    report = run_study(nas_settings, space, TRAIN, HELD, study_name="front", n_trials=3,
                       mode="pareto")
    stored = _optuna_study(nas_settings, "front")
    assert len(stored.directions) == 2
    assert report.trials_pruned == 0 and report.trials_complete == 3
    assert {p.trial for p in report.pareto_front} == {t.number for t in stored.best_trials}
    assert pareto_front(report.trials) == report.pareto_front
    with pytest.raises(TrainingError, match="sampler nsga2 is multi-objective"):
        run_study(nas_settings, space, TRAIN, HELD, study_name="front", n_trials=4)
    tpe = SearchSpace.model_validate(space_dict())
    with pytest.raises(TrainingError, match="mode pareto, not pruned"):
        run_study(nas_settings, tpe, TRAIN, HELD, study_name="front", n_trials=4)


def test_show_unknown_study(nas_settings: Settings) -> None:
    with pytest.raises(NotFoundError, match="no NAS study 'ghost'"):
        show_study(nas_settings, "ghost")


# ------------------------------------------------------------------- several processes
WORKER = """
import sys
from sutazai.config import Settings
from sutazai.learning.nas import load_space, run_study
from tests.learning.test_nas import TRAIN, HELD
settings = Settings()
worker = None if sys.argv[4] == "-" else int(sys.argv[4])
report = run_study(settings, load_space(sys.argv[1]), TRAIN, HELD, study_name=sys.argv[2],
                   n_trials=int(sys.argv[3]), worker=worker)
print(report.model_dump_json())
"""


def _start(settings: Settings, space: Path, study: str, trials: int,
           worker: int | None) -> subprocess.Popen[str]:
    env = os.environ | {"SUTAZAI_HOME": str(settings.home),
                        "SUTAZAI_MLFLOW_TRACKING_URI": settings.tracking_uri}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(space), study, str(trials),
         "-" if worker is None else str(worker)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _states(settings: Settings, study: str) -> dict[str, int]:
    import optuna
    import sqlalchemy.exc

    if not (settings.home / "nas.db").exists():
        return {}
    try:
        trials = _optuna_study(settings, study).trials
    except (KeyError, sqlalchemy.exc.OperationalError):  # not created yet, or being created
        return {}
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    assert all(s in optuna.trial.TrialState.__members__ for s in counts)
    return counts


def _running_sampled(settings: Settings, study: str) -> int:
    import sqlalchemy.exc

    if not (settings.home / "nas.db").exists():
        return 0
    try:
        trials = _optuna_study(settings, study).trials
    except (KeyError, sqlalchemy.exc.OperationalError):
        return 0
    return sum(1 for t in trials if t.state.name == "RUNNING" and "epochs" in t.user_attrs)


@pytest.mark.slow
def test_killed_study_resumes_without_redoing_trials(nas_settings: Settings,
                                                     tmp_path: Path) -> None:
    space_file = write_space(tmp_path / "space.yaml", training={"epochs": 3,
                                                               "max_batches_per_epoch": 8},
                             search={"pruner": "none"})
    process = _start(nas_settings, space_file, "killed", 6, None)
    deadline = time.monotonic() + 180
    # kill it in the middle of its third trial or later: 2 complete, one running that has
    # sampled all its parameters (a trial killed while sampling has only some, and its
    # retry could not be compared with them); "epochs" is set once sampling is done
    while not (_states(nas_settings, "killed").get("COMPLETE", 0) >= 2
               and _running_sampled(nas_settings, "killed") == 1):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = {t.number: (t.state.name, t.values, t.params)
              for t in _optuna_study(nas_settings, "killed").trials}
    finished_before = sum(1 for s, _, _ in before.values() if s == "COMPLETE")
    assert finished_before >= 2

    report = run_study(nas_settings, load_space(space_file), TRAIN, HELD, study_name="killed",
                       n_trials=6)
    assert report.trials_finished == 6
    assert report.trials_run_here == 6 - finished_before
    after = _optuna_study(nas_settings, "killed").trials
    for number, (state, values, _) in before.items():
        if state == "COMPLETE":  # kept, not redone
            assert (after[number].state.name, after[number].values) == ("COMPLETE", values)
    # the trial killed mid-way: failed by its heartbeat, then retried with its params
    stale = [n for n, (state, _, _) in before.items() if state == "RUNNING"]
    assert len(stale) == 1
    assert after[stale[0]].state.name == "FAIL"
    retried = [t for t in after if t.system_attrs.get("failed_trial") == stale[0]]
    assert len(retried) == 1 and retried[0].params == before[stale[0]][2]
    assert retried[0].state.name == "COMPLETE"


@pytest.mark.slow
def test_two_worker_processes_share_one_study(nas_settings: Settings, tmp_path: Path) -> None:
    space_file = write_space(tmp_path / "space.yaml", search={"heartbeat_s": 2})
    processes = [_start(nas_settings, space_file, "shared", 6, worker) for worker in (0, 1)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert all(r["trials_run_here"] >= 1 for r in reports), reports
    # each took its share; at most one extra trial when both saw the last slot at once
    assert 6 <= sum(r["trials_run_here"] for r in reports) <= 7
    trials = _optuna_study(nas_settings, "shared").trials
    assert {t.user_attrs.get("worker") for t in trials} == {0, 1}
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert len({r["mlflow_run_id"] for r in reports}) == 1
    client = _mlflow(nas_settings)
    experiment = client.get_experiment_by_name(nas_settings.learning_experiment)
    parents = client.search_runs([experiment.experiment_id],
                                 "tags.`sutazai.nas.study` = 'shared' and "
                                 "tags.`sutazai.step` = 'nas'")
    assert len(parents) == 1
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert len(children) == len(trials)


# ---------------------------------------------------------------------------------- CLI
def test_cli_run_and_show(nas_settings: Settings, tmp_path: Path) -> None:
    from sutazai.cli.nas import app

    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    space = write_space(tmp_path / "space.yaml")
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--space", str(space), "--trials", "2", "--study", "cli",
                                 "--data", str(data), "--json", "--register"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["trials_finished"] == 2 and report["registered"] == "nas-cli:1"

    result = runner.invoke(app, ["show", "cli"])
    assert result.exit_code == 0, result.output
    assert "NAS study cli" in result.stdout and "Pareto front" in result.stdout
    assert "registered nas-cli:1" in result.stdout

    result = runner.invoke(app, ["run", "--space", str(tmp_path / "missing.yaml")])
    assert isinstance(result.exception, TrainingError)
    result = runner.invoke(app, ["show", "ghost", "--json"])
    assert isinstance(result.exception, NotFoundError)
