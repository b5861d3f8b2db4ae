"""Neural architecture search: an Optuna study over small causal LMs, tracked in MLflow.

How it fits together, and why:

- **Storage.** The study lives in the RDB ``settings.nas_storage`` (SQLite by default, a
  database URL in production). A killed search resumes where it stopped: ``n_trials`` is
  the number of *finished* trials (complete or pruned) the study should hold in total, so
  a second call runs only the remaining ones. Workers set up its schema one at a time (a
  file lock for SQLite, an advisory lock in PostgreSQL). Each trial beats a heartbeat; a
  trial whose process died is failed once its heartbeat is 3x late and re-queued once with
  the same parameters (``RetryHeartbeatStaleTrialCallback``).
- **Workers.** Several processes (KFP tasks) may call :func:`run_study` on the same study
  at once; each keeps taking trials until the study holds ``n_trials`` finished ones. The
  first process to create the study also trains the tokenizer and opens the MLflow study
  run; both are kept in the study's attributes, so every worker, on any machine, uses the
  same vocabulary and logs under the same parent run. A worker may start one trial more
  than needed when two see the last free slot at the same moment (at most workers - 1).
- **Objectives.** Optuna cannot prune multi-objective studies (``Trial.report`` raises
  NotImplementedError in Optuna 5.0, checked). Mode ``pruned`` (default) minimises the
  validation loss alone with a Hyperband, ASHA or median pruner fed by the per-epoch validation
  loss, records the parameter count (and a measured forward latency) on each trial, and
  computes the Pareto front of loss against the second objective itself. Mode ``pareto``
  is a true two-objective study (TPE or NSGA-II), without pruning.
- **Registering.** :func:`register_best` retrains the best trial rather than keeping
  every trial's weights: trials run on several machines whose disks are not shared, the
  weights of all trials would cost far more storage than the seconds a retrain costs, and
  training is deterministic (same seed, same data order, same tokenizer) — the retrained
  loss is recorded next to the trial's so any drift (e.g. another thread count) shows.

Heavy libraries (optuna, torch, transformers, mlflow) are imported inside functions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from sutazai.config import Settings
from sutazai.embedded_db import first_use_of, sqlite_file
from sutazai.errors import NotFoundError, TrainingError
from sutazai.learning import tinylm
from sutazai.learning.nas_report import (
    ParetoRow,
    StudyReport,
    TrialRow,
    history_figure,
    pareto_figure,
    pareto_front,
    trial_row,
)
from sutazai.learning.search_space import (
    CategoricalParam,
    FloatParam,
    IntParam,
    SearchSpace,
    load_space,
    resolve_heads,
)
from sutazai.production.databases import connect_args, is_postgres
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.repository import provenance

if TYPE_CHECKING:
    import optuna

    from sutazai.registry.mlflow_registry import ModelRegistry
    from sutazai.repository.manifest import Manifest

__all__ = ["ParetoRow", "StudyReport", "TrialRow", "load_space", "register_best", "run_study",
           "show_study"]

log = logging.getLogger(__name__)
Mode = Literal["pruned", "pareto"]
STUDY_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,59}$")
ATTR = "sutazai."
MLFLOW_WAIT_S = 60.0
SCHEMA_LOCK_KEY = 0x5A7A_0A15  # pg_advisory_lock key of the NAS schema setup
SCHEMA_LOCK_S = 120


# ------------------------------------------------------------------------------ helpers
@contextmanager
def _quiet() -> Iterator[None]:
    """Heartbeats, stale-trial failing and multivariate TPE are marked experimental in
    Optuna 5.0 (stable for years); the warning says nothing a user can act on."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def data_digest(train_texts: Sequence[str], eval_texts: Sequence[str]) -> str:
    """sha256 of both text lists (length-prefixed, so no two splits collide)."""
    digest = hashlib.sha256()
    for label, texts in ((b"train", train_texts), (b"eval", eval_texts)):
        digest.update(label + len(texts).to_bytes(8, "big"))
        for text in texts:
            data = text.encode()
            digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def _check_inputs(space: SearchSpace, train_texts: Sequence[str], eval_texts: Sequence[str],
                  study_name: str) -> None:
    if space.kind != "architecture":
        raise TrainingError(
            "this search space is kind lora: the built-in NAS objective trains architectures "
            "from scratch only; LoRA spaces are validated and sampled but need a fine-tuning "
            "objective (use kind: architecture)")
    if not STUDY_NAME.match(study_name):
        raise TrainingError(f"study name {study_name!r} is not valid: use 1-60 lowercase "
                            "letters, digits, '.', '_' or '-' (it names the model nas-<study>)")
    if not any(t.strip() for t in train_texts) or not any(t.strip() for t in eval_texts):
        raise TrainingError("architecture search needs training and held-out texts: pass "
                            "both (the held-out texts decide which architecture wins)")


@contextmanager
def _schema_lock(url: str, engine: dict[str, Any]) -> Iterator[None]:
    """Held while Optuna creates or checks its schema in a PostgreSQL database.

    Optuna creates its tables, version row and Alembic stamp without a lock; two workers
    starting on a fresh database collide (``UniqueViolation`` on ``pg_type``, measured 7 times
    in 8 with two processes). A session advisory lock, PostgreSQL's counterpart of the SQLite
    :func:`first_use_of` file lock, serialises the setup instead of failing and retrying;
    it is released when this connection ends, so a worker killed while holding it blocks no
    one. Other URLs hold nothing.
    """
    if not is_postgres(url):
        yield
        return
    import sqlalchemy

    lock_engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **engine)
    try:
        with lock_engine.connect() as connection:
            # a hung holder makes the wait fail (and _storage retry) rather than hang forever
            connection.execute(sqlalchemy.text(f"SET statement_timeout = '{SCHEMA_LOCK_S}s'"))
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"),
                               {"key": SCHEMA_LOCK_KEY})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                                   {"key": SCHEMA_LOCK_KEY})
                connection.commit()
    finally:
        lock_engine.dispose()


def _storage(settings: Settings, heartbeat_s: int) -> optuna.storages.RDBStorage:
    import optuna

    url = settings.nas_storage
    engine: dict[str, Any] = {"connect_args": connect_args(settings, url)}
    if sqlite_file(url) is not None:  # its folder is made by first_use_of below
        # several worker processes write: wait for the lock instead of failing at once
        engine = {"connect_args": {"timeout": 60}}
    for attempt in range(5):
        try:
            with (_quiet(), first_use_of(url, "the NAS study storage"),
                  _schema_lock(url, engine)):
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=heartbeat_s,
                    grace_period=3 * heartbeat_s,
                    heartbeat_stale_trial_callback=(
                        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)),
                )
        except Exception as exc:  # sqlalchemy errors: bad URL, unreachable server, a lock
            # wait that timed out: retry
            if attempt == 4:
                raise TrainingError(f"cannot open the NAS study storage {_redacted(settings)}: "
                                    f"{exc}; check SUTAZAI_NAS_STORAGE_URL") from None
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _sampler(space: SearchSpace, mode: Mode, salt: int) -> optuna.samplers.BaseSampler:
    """Seeded from the space, the worker and how many trials the study already holds, so a
    fresh study is reproducible and a resumed one does not draw its first trials again."""
    import optuna

    seed = space.search.seed * 1_000_003 + salt
    if space.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if space.search.sampler == "nsga2":
        if mode != "pareto":
            raise TrainingError("sampler nsga2 is multi-objective: use mode pareto, or "
                                "sampler tpe/random with mode pruned")
        return optuna.samplers.NSGAIISampler(seed=seed)
    with _quiet():
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=space.search.startup_trials, multivariate=True)


def _pruner(space: SearchSpace, mode: Mode) -> optuna.pruners.BasePruner:
    import optuna

    if mode == "pareto" or space.search.pruner == "none":
        return optuna.pruners.NopPruner()
    if space.search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=max(1, space.search.startup_trials),
                                           n_warmup_steps=0)
    if space.search.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3,
                                                      min_early_stopping_rate=0)
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=space.training.epochs,
                                          reduction_factor=3)


def _sample(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    params: dict[str, Any] = dict(space.fixed())
    for key, spec in space.distributions().items():
        if isinstance(spec, IntParam):
            params[key] = trial.suggest_int(key, spec.low, spec.high, step=spec.step,
                                            log=spec.log)
        elif isinstance(spec, FloatParam):
            params[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
        elif isinstance(spec, CategoricalParam):
            params[key] = trial.suggest_categorical(key, spec.choices)
    return params


def _effective(space: SearchSpace, params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The numbers a trial trains with: heads resolved against the width (see
    :func:`resolve_heads`), and a note when they differ from the sampled ones."""
    width, heads = int(params["hidden_size"]), int(params["num_attention_heads"])
    used = resolve_heads(space, width, heads)
    if used == heads:
        return params, None
    note = (f"num_attention_heads {heads} does not split hidden_size {width} into even "
            f"heads; trained with {used}")
    return params | {"num_attention_heads": used}, note


def _attr(study: optuna.Study, key: str) -> Any:
    return study.user_attrs.get(ATTR + key)


# --------------------------------------------------------------------------- the study
class _Context:
    """What one worker needs for every trial: the study, its data and its MLflow run."""

    def __init__(self, settings: Settings, study: optuna.Study, space: SearchSpace, mode: Mode,
                 tokenizer_json: str, train_texts: Sequence[str], eval_texts: Sequence[str],
                 run_id: str, worker: int | None) -> None:
        self.settings, self.study, self.space, self.mode = settings, study, space, mode
        self.tokenizer = tinylm.load_tokenizer(tokenizer_json)
        seq = space.training.seq_len
        self.train_blocks = tinylm.token_blocks(self.tokenizer, train_texts, seq, "training")
        self.eval_blocks = tinylm.token_blocks(self.tokenizer, eval_texts, seq, "held-out")
        self.run_id, self.worker = run_id, worker
        self.registry = _registry(settings)

    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        import optuna

        space, training = self.space, self.space.training
        sampled = _sample(trial, space)
        params, note = _effective(space, sampled)
        if note:
            trial.set_user_attr("note", note)
        model = tinylm.build_model(params, self.tokenizer, training.seq_len, training.seed)
        n_params = tinylm.count_parameters(model)
        latency = tinylm.forward_latency_ms(model, training.seq_len)
        trial.set_user_attr("n_params", n_params)
        trial.set_user_attr("latency_ms", latency)
        trial.set_user_attr("epochs", 0)
        if self.worker is not None:
            trial.set_user_attr("worker", self.worker)
        child = self._start_child(trial, params, n_params, latency, note)

        def on_epoch(result: tinylm.EpochResult) -> None:
            trial.set_user_attr("epochs", result.epoch)
            self._log_epoch(child, result)
            if self.mode == "pruned":
                trial.report(result.val_loss, result.epoch)
                if result.epoch < training.epochs and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {result.epoch}: validation "
                                             f"loss {result.val_loss:.4f}")

        try:
            results = tinylm.train(
                model, self.train_blocks, self.eval_blocks,
                learning_rate=float(params["learning_rate"]), epochs=training.epochs,
                batch_size=training.batch_size, seed=training.seed,
                max_batches_per_epoch=training.max_batches_per_epoch,
                schedule=training.lr_schedule, on_epoch=on_epoch)
        except optuna.TrialPruned:
            self.registry.client.set_terminated(child, "KILLED")
            raise
        except TrainingError as exc:  # diverged: a property of the configuration
            trial.set_user_attr("note", str(exc))
            self.registry.client.set_terminated(child, "KILLED")
            raise optuna.TrialPruned(str(exc)) from None
        except BaseException:
            self.registry.client.set_terminated(child, "FAILED")
            raise
        self.registry.client.set_terminated(child, "FINISHED")
        loss = results[-1].val_loss
        if self.mode == "pareto":
            return loss, _second(space, n_params, latency)
        return loss

    def _start_child(self, trial: optuna.Trial, params: dict[str, Any], n_params: int,
                     latency: float, note: str | None) -> str:
        tags = {"mlflow.parentRunId": self.run_id, "sutazai.step": "nas-trial",
                "sutazai.nas.study": self.study.study_name,
                "sutazai.nas.trial": str(trial.number)}
        if note:
            tags["sutazai.nas.note"] = note
        child = self.registry.start_run(
            f"{self.study.study_name} trial {trial.number}", tags=tags,
            params={**params, "trial": trial.number, "worker": self.worker},
            experiment=self.settings.learning_experiment)
        self.registry.client.log_metric(child, "n_params", n_params)
        self.registry.client.log_metric(child, "latency_ms", latency)
        return child

    def _log_epoch(self, child: str, result: tinylm.EpochResult) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.registry.client.log_batch(child, metrics=[
            Metric("val_loss", result.val_loss, now, result.epoch),
            Metric("train_loss", result.train_loss, now, result.epoch),
            Metric("epoch_seconds", result.seconds, now, result.epoch)])


def _second(space: SearchSpace, n_params: int, latency: float) -> float:
    return float(n_params) if space.search.second_objective == "params" else latency


def _registry(settings: Settings) -> ModelRegistry:
    from sutazai.registry import open_registry

    return open_registry(settings)


def _open_study(settings: Settings, space: SearchSpace, mode: Mode, study_name: str,
                train_texts: Sequence[str], eval_texts: Sequence[str], n_trials: int,
                worker: int | None) -> tuple[optuna.Study, str, str]:
    """Create or load the study; returns (study, tokenizer json, MLflow study run id).

    Creating the study is the lock: ``create_study`` succeeds in exactly one process,
    which then stores the tokenizer and opens the MLflow run; the others wait for both.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(settings, space.search.heartbeat_s)
    digest = data_digest(train_texts, eval_texts)
    directions: list[Literal["minimize", "maximize"]] = (
        ["minimize", "minimize"] if mode == "pareto" else ["minimize"])
    try:
        existing = len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:
        existing = 0
    salt = (worker or 0) * 7919 + existing
    sampler, pruner = _sampler(space, mode, salt), _pruner(space, mode)
    created = False
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler,
                                    pruner=pruner, directions=directions)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler,
                                  pruner=pruner)
    if created:
        registry = _registry(settings)
        tokenizer_json = tinylm.train_tokenizer_json(train_texts, space.training.vocab_size)
        study.set_user_attr(ATTR + "mode", mode)
        study.set_user_attr(ATTR + "space_digest", space.digest)
        study.set_user_attr(ATTR + "space", space.model_dump(mode="json"))
        study.set_user_attr(ATTR + "data_digest", digest)
        study.set_user_attr(ATTR + "n_trials", n_trials)
        study.set_user_attr(ATTR + "tokenizer", tokenizer_json)
        run_id = registry.start_run(
            f"nas {study_name}",
            tags={"sutazai.step": "nas", "sutazai.nas.study": study_name,
                  "sutazai.nas.mode": mode, "sutazai.data_digest": digest},
            params={"study": study_name, "mode": mode, "storage": _redacted(settings),
                    "n_trials": n_trials, "space_digest": space.digest,
                    "train_texts": len(train_texts), "eval_texts": len(eval_texts),
                    "space": json.dumps(space.model_dump(mode="json")["params"]),
                    **{f"training.{k}": v for k, v in space.training.model_dump().items()},
                    **{f"search.{k}": v for k, v in space.search.model_dump().items()}},
            experiment=settings.learning_experiment)
        study.set_user_attr(ATTR + "mlflow_run_id", run_id)
        return study, tokenizer_json, run_id
    _check_same(study, mode, space, digest)
    deadline = time.monotonic() + MLFLOW_WAIT_S
    while _attr(study, "mlflow_run_id") is None or _attr(study, "tokenizer") is None:
        if time.monotonic() > deadline:
            raise TrainingError(
                f"study {study_name} exists in {_redacted(settings)} but was never set up "
                "(its creator died at once): delete it with optuna delete-study or pick "
                "another --study name")
        time.sleep(0.5)
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler,
                                  pruner=pruner)
    _check_same(study, mode, space, digest)
    if n_trials > int(_attr(study, "n_trials") or 0):
        study.set_user_attr(ATTR + "n_trials", n_trials)
    return study, str(_attr(study, "tokenizer")), str(_attr(study, "mlflow_run_id"))


def _check_same(study: optuna.Study, mode: Mode, space: SearchSpace, digest: str) -> None:
    """A study is resumed with what it started with, or its trials would not compare."""
    name = study.study_name
    stored_mode = _attr(study, "mode") or ("pareto" if len(study.directions) == 2 else "pruned")
    if stored_mode != mode:
        raise TrainingError(f"study {name} was run in mode {stored_mode}, not {mode}: resume "
                            f"it with --mode {stored_mode} or pick another --study name")
    stored = _attr(study, "space_digest")
    if stored is not None and stored != space.digest:
        raise TrainingError(f"study {name} was run with another search space: resume it "
                            "with the same space file or pick another --study name")
    stored = _attr(study, "data_digest")
    if stored is not None and stored != digest:
        raise TrainingError(f"study {name} was run on other texts (data digest "
                            f"{stored[:12]}): resume it with the same data or pick another "
                            "--study name")


def _redacted(settings: Settings) -> str:
    """The storage URL without a password (it goes into MLflow params and messages)."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", settings.nas_storage)


class _Counts(BaseModel):
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def _counts(study: optuna.Study) -> _Counts:
    from optuna.trial import TrialState

    counts = _Counts()
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.COMPLETE:
            counts.complete += 1
        elif trial.state == TrialState.PRUNED:
            counts.pruned += 1
        elif trial.state == TrialState.FAIL:
            counts.failed += 1
        elif trial.state == TrialState.RUNNING:
            counts.running += 1
        else:
            counts.waiting += 1
    return counts


def run_study(settings: Settings, space: SearchSpace, train_texts: Sequence[str],
              eval_texts: Sequence[str], *, study_name: str, n_trials: int,
              timeout_s: float | None = None, mode: Mode = "pruned", worker: int | None = None,
              progress: Progress = NULL_PROGRESS) -> StudyReport:
    """Run (or resume, or join) a study until it holds ``n_trials`` finished trials.

    ``worker`` numbers a process when several share the study (it salts the sampler seed
    and is recorded on its trials); ``timeout_s`` stops starting new trials after that
    many seconds. Returns the study as it stands when this worker stops.
    """
    import optuna

    if mode not in ("pruned", "pareto"):
        raise TrainingError(f"mode {mode!r} is not known: use pruned or pareto")
    if n_trials < 1:
        raise TrainingError("--trials must be at least 1")
    _check_inputs(space, train_texts, eval_texts, study_name)
    study, tokenizer_json, run_id = _open_study(settings, space, mode, study_name, train_texts,
                                                eval_texts, n_trials, worker)
    context = _Context(settings, study, space, mode, tokenizer_json, train_texts, eval_texts,
                       run_id, worker)
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None
    bar = progress.task(f"NAS {study_name} (trials)", total=n_trials)
    shown = 0
    ran_here = 0
    poll_s = min(1.0, space.search.heartbeat_s / 2)
    try:
        while True:
            with _quiet():
                optuna.storages.fail_stale_trials(study)
            counts = _counts(study)
            bar.advance(min(counts.finished, n_trials) - shown)
            shown = min(counts.finished, n_trials)
            if counts.finished >= n_trials:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if counts.finished + counts.running >= n_trials:
                # the last trials run elsewhere, or belong to a dead process whose heartbeat
                # has not expired yet: wait, and take over if they fail
                time.sleep(poll_s)
                continue
            with _quiet():
                study.optimize(context.objective, n_trials=1)
            ran_here += 1
    finally:
        bar.close()
    report = _report(study, n_trials)
    report.trials_run_here = ran_here
    _log_summary(settings, study, report)
    return report


# ----------------------------------------------------------------------------- reports
def _report(study: optuna.Study, n_trials: int | None) -> StudyReport:
    space = _attr(study, "space") or {}
    second = (space.get("search") or {}).get("second_objective", "params")
    rows = [trial_row(t, second) for t in study.get_trials(deepcopy=False)]
    counts = _counts(study)
    complete = [r for r in rows if r.state == "COMPLETE" and r.val_loss is not None]
    best = min(complete, key=lambda r: (r.val_loss, r.number)) if complete else None
    return StudyReport(
        study=study.study_name, mode=_attr(study, "mode") or "pruned", second_objective=second,
        trials_target=n_trials if n_trials is not None else _attr(study, "n_trials"),
        trials_finished=counts.finished, trials_complete=counts.complete,
        trials_pruned=counts.pruned, trials_failed=counts.failed,
        trials_running=counts.running, best_trial=best.number if best else None,
        best_value=best.val_loss if best else None, best_params=best.params if best else {},
        pareto_front=pareto_front(rows), trial_epochs=sum(r.epochs for r in rows),
        mlflow_run_id=_attr(study, "mlflow_run_id"), registered=_attr(study, "registered"),
        trials=rows)


def _log_summary(settings: Settings, study: optuna.Study, report: StudyReport) -> None:
    """Metrics, the Pareto-front plot and the optimisation history on the study run.

    Every worker logs when it stops (same artifact names, so the last one wins and holds
    the most trials); the run is finished once the study holds its target.
    """
    if report.mlflow_run_id is None:
        return
    from mlflow.entities import Metric

    client = _registry(settings).client
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in (
        ("trials_finished", report.trials_finished), ("trials_pruned", report.trials_pruned),
        ("trials_failed", report.trials_failed), ("trial_epochs", report.trial_epochs),
        ("pareto_size", len(report.pareto_front)))]
    if report.best_value is not None:
        metrics.append(Metric("best_val_loss", report.best_value, now, 0))
    client.log_batch(report.mlflow_run_id, metrics=metrics)
    if report.best_trial is not None:
        client.set_tag(report.mlflow_run_id, "sutazai.nas.best_trial", str(report.best_trial))
    client.log_dict(report.mlflow_run_id,
                    {"second_objective": report.second_objective,
                     "front": [p.model_dump() for p in report.pareto_front]},
                    "pareto_front.json")
    figure = pareto_figure(report)
    client.log_figure(report.mlflow_run_id, figure, "pareto_front.png")
    history = history_figure(report)
    client.log_figure(report.mlflow_run_id, history, "optimization_history.png")
    import matplotlib.pyplot as plt

    plt.close(figure)
    plt.close(history)
    if report.trials_target is not None and report.trials_finished >= report.trials_target:
        client.set_terminated(report.mlflow_run_id, "FINISHED")


def _load(settings: Settings, study_name: str) -> optuna.Study:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _storage(settings, 10)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        raise NotFoundError(f"no NAS study {study_name!r} in {_redacted(settings)}; studies: "
                            f"{', '.join(names) or 'none'} (start one with sutazai nas run)"
                            ) from None


def show_study(settings: Settings, study_name: str) -> StudyReport:
    """The trials, best trial and Pareto front of a study, as stored."""
    study = _load(settings, study_name)
    return _report(study, _attr(study, "n_trials"))


# ---------------------------------------------------------------------------- register
def register_best(settings: Settings, study_name: str, space: SearchSpace,
                  train_texts: Sequence[str], eval_texts: Sequence[str]) -> Manifest:
    """Retrain the study's best trial, store it as ``nas-<study>`` and register it.

    The version's source is ``nas:<study>#<trial>``, its revision the digest of the texts
    it was trained on; the MLflow study run gets tags pointing at the version.
    """
    from sutazai.optimize.derive import publish_derived
    from sutazai.repository import open_repository

    study = _load(settings, study_name)
    mode: Mode = "pareto" if _attr(study, "mode") == "pareto" else "pruned"
    digest = data_digest(train_texts, eval_texts)
    _check_same(study, mode, space, digest)
    report = _report(study, None)
    if report.best_trial is None:
        raise TrainingError(f"study {study_name} has no completed trial to register: run "
                            "more trials (sutazai nas run)")
    trial = study.trials[report.best_trial]
    tokenizer = tinylm.load_tokenizer(str(_attr(study, "tokenizer")))
    params, _ = _effective(space, dict(space.fixed()) | dict(trial.params))
    training = space.training
    model = tinylm.build_model(params, tokenizer, training.seq_len, training.seed)
    results = tinylm.train(
        model, tinylm.token_blocks(tokenizer, train_texts, training.seq_len, "training"),
        tinylm.token_blocks(tokenizer, eval_texts, training.seq_len, "held-out"),
        learning_rate=float(params["learning_rate"]), epochs=training.epochs,
        batch_size=training.batch_size, seed=training.seed,
        max_batches_per_epoch=training.max_batches_per_epoch, schedule=training.lr_schedule)
    retrained = results[-1].val_loss
    recorded = float(report.best_value or 0.0)
    if abs(retrained - recorded) > 1e-3 * max(1.0, abs(recorded)):
        log.warning("retrained trial %s of %s: validation loss %.5f, the trial had %.5f "
                    "(another thread count or library version?)", trial.number, study_name,
                    retrained, recorded)
    repo = open_repository(settings)
    arch = ", ".join(f"{k}={params[k]}" for k in tinylm.ARCHITECTURE_KEYS)
    with repo.staging_dir("nas") as stage:
        folder = tinylm.save(model, tokenizer, stage / "model")
        manifest, _ = publish_derived(
            settings, folder, name=f"nas-{study_name}", parent=None, tasks=["text-generation"],
            source=provenance.searched_in(study_name, trial.number), revision=digest,
            format="safetensors",
            description=f"Llama found by architecture search {study_name} (trial "
                        f"{trial.number}: {arch}; validation loss {retrained:.4f} nats/token, "
                        f"{tinylm.count_parameters(model):,} parameters), trained from scratch "
                        f"on {len(train_texts)} texts")
    study.set_user_attr(ATTR + "registered", manifest.ref)
    run_id = _attr(study, "mlflow_run_id")
    if run_id is not None:
        client = _registry(settings).client
        for key, value in (("sutazai.nas.registered", manifest.ref),
                           ("sutazai.nas.registered_digest", manifest.digest),
                           ("sutazai.nas.registered_trial", str(trial.number)),
                           ("sutazai.nas.registered_model", manifest.name),
                           ("sutazai.nas.registered_version", str(manifest.version))):
            client.set_tag(run_id, key, value)
        client.log_metric(run_id, "registered_val_loss", retrained)
    return manifest
