"""Champion/challenger promotion: the pure rules on synthetic numbers, then the whole
challenge (registration as challenger, the same benchmark for both on the same held-out
data, the decision in MLflow, rollback) on the real Gemma 3 270M served by llama.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sutazai.benchmark.metrics import SLO
from sutazai.config import Settings
from sutazai.learning.challenge import evaluate_and_promote, heldout_data_dir
from sutazai.optimize.derive import publish_derived
from sutazai.registry import open_registry
from sutazai.registry.task_aliases import CHALLENGER, CHAMPION, TaskAliases, task_model_name
from sutazai.repository import open_repository
from sutazai.security.audit import open_audit_log
from sutazai.selection.leaderboard import HELDOUT, leaderboard
from sutazai.selection.promotion import Evaluation, decide, hold_or_replace
from sutazai.selection.rules import Candidate, Weights, select
from tests.benchmark.test_benchmark_run import publish

TASK = "text-generation"


def scored(ref: str, perplexity: float, *misses: str) -> Evaluation:
    return Evaluation(ref=ref, engine="llamacpp", metrics={"perplexity": perplexity},
                      slo_failures=list(misses))


def test_a_worse_challenger_is_not_promoted() -> None:
    decision = decide(TASK, scored("a:1", 10.0), scored("b:1", 11.0), margin=0.01)
    assert not decision.promoted and decision.champion_after == "a:1@llamacpp"
    assert decision.gain == pytest.approx(-0.1)
    assert "a:1@llamacpp stays champion" in decision.reason and "11.000" in decision.reason


def test_a_challenger_must_win_by_the_margin() -> None:
    assert not decide(TASK, scored("a:1", 10.0), scored("b:1", 9.95), margin=0.01).promoted
    won = decide(TASK, scored("a:1", 10.0), scored("b:1", 9.0), margin=0.01)
    assert won.promoted and won.champion_after == "b:1@llamacpp"
    assert won.gain == pytest.approx(0.1)


def test_a_better_challenger_that_misses_an_slo_is_not_promoted() -> None:
    decision = decide(TASK, scored("a:1", 10.0),
                      scored("b:1", 5.0, "P95 TTFT 250.0 ms > 100 ms"), margin=0.01)
    assert not decision.promoted and "P95 TTFT 250.0 ms" in decision.reason


def test_without_a_champion_a_challenger_within_the_slos_is_promoted() -> None:
    assert decide(TASK, None, scored("b:1", 12.0), margin=0.5).promoted


def candidate(model: str, ttft: float, quality: float) -> Candidate:
    return Candidate(model=model, version=1, engine="llamacpp", concurrency=1, ttft_p95_ms=ttft,
                     e2el_p95_ms=ttft * 5, output_throughput=40.0, memory_mib=600.0,
                     quality=quality)


def test_the_nightly_selection_only_proposes_when_a_champion_exists() -> None:
    incumbent = candidate("incumbent", 80.0, 0.50)
    slightly_better = candidate("newcomer", 79.0, 0.50)
    selection = select(TASK, [incumbent, slightly_better], SLO(ttft_p95_ms=100), Weights())
    assert selection.winner is not None and selection.winner.model == "newcomer"

    champion, challenger, note = hold_or_replace(selection, incumbent, margin=2.0)
    assert champion is not None and champion.model == "incumbent"
    assert challenger is not None and challenger.model == "newcomer"
    assert "stays champion" in note and "under the margin" in note

    champion, challenger, note = hold_or_replace(selection, incumbent, margin=0.01)
    assert champion is not None and champion.model == "newcomer" and "replaces" in note


def test_a_champion_that_misses_the_slos_is_replaced_and_an_unseen_one_is_kept() -> None:
    slow = candidate("incumbent", 500.0, 0.9)
    fast = candidate("newcomer", 50.0, 0.4)
    selection = select(TASK, [slow, fast], SLO(ttft_p95_ms=100), Weights())
    champion, _, note = hold_or_replace(selection, slow, margin=10.0)
    assert champion is not None and champion.model == "newcomer"
    assert "no longer meets the SLOs" in note and "P95 TTFT 500.0 ms" in note

    promoted_elsewhere = candidate("finetuned", 60.0, 0.6)
    champion, challenger, note = hold_or_replace(selection, promoted_elsewhere, margin=0.0)
    assert champion is promoted_elsewhere and challenger is not None
    assert challenger.model == "newcomer" and "not among tonight's candidates" in note


@pytest.mark.slow
def test_challenge_on_real_models_records_decisions_and_rollback_restores(
    settings: Settings, gemma_gguf: Path
) -> None:
    settings = settings.model_copy(update={
        "benchmark_profile": "smoke", "selection_slo": SLO(ttft_p95_ms=60_000)})
    publish(settings, gemma_gguf, "gemma3-270m")
    repo = open_repository(settings)
    base = repo.get("gemma3-270m")
    aliases = TaskAliases(open_registry(settings))
    aliases.set(TASK, CHAMPION, base, "llamacpp", 1, "initial champion")
    # The same weights under another name: exactly as good, so no gain to promote it for.
    twin, _ = publish_derived(settings, repo.ensure_snapshot(base), name="gemma3-270m-twin",
                              parent=base, source=f"derived:{base.ref}", revision=base.digest,
                              format="gguf", description="a copy for the promotion test")
    heldout = ["The capital of France is Paris.", "Two plus two is four.",
               "Water boils at one hundred degrees Celsius at sea level."]

    kept = evaluate_and_promote(settings, TASK, twin, None, heldout, "d" * 64, margin=0.01)
    assert not kept.promoted, kept.reason
    champion_eval, twin_eval = kept.evaluations
    assert champion_eval.metrics["perplexity"] == pytest.approx(
        twin_eval.metrics["perplexity"], rel=1e-3)
    assert champion_eval.metrics["heldout_tokens"] == twin_eval.metrics["heldout_tokens"] > 10
    assert aliases.require(TASK, CHAMPION).model == "gemma3-270m"
    assert aliases.require(TASK, CHALLENGER).model == "gemma3-270m-twin"
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(kept.run_id or "")
    assert run.data.tags["sutazai.decision"] == "kept"
    assert "stays champion" in run.data.tags["sutazai.reason"]
    version = aliases.require(TASK, CHALLENGER).registry_version
    tags = client.get_model_version(task_model_name(TASK), version).tags
    assert tags["sutazai.decision"] == "kept"
    assert (heldout_data_dir(settings, heldout, "d" * 64) / "heldout.txt").read_text().count(
        "\n") == 3

    # A negative margin accepts a tie: the promotion path itself, then rollback undoes it.
    promoted = evaluate_and_promote(settings, TASK, twin, None, heldout, "d" * 64, margin=-0.5)
    assert promoted.promoted and aliases.require(TASK, CHAMPION).model == "gemma3-270m-twin"
    assert aliases.get(TASK, CHALLENGER) is None
    # the leaderboard names the same champion, with the held-out numbers the challenge logged
    [row] = [e for e in leaderboard(settings, TASK) if e.model == "gemma3-270m-twin"]
    assert row.source == HELDOUT and row.summary is not None
    assert row.summary.run_id == promoted.evaluations[1].run_id
    assert [(r.task, r.alias) for r in row.roles] == [(TASK, CHAMPION)]
    restored, demoted = aliases.rollback(TASK)
    assert (restored.model, demoted.model) == ("gemma3-270m", "gemma3-270m-twin")
    assert aliases.require(TASK, CHAMPION).model == "gemma3-270m"

    log = open_audit_log(settings)
    assert log.verify().ok
    actions = [(r.action, r.target, r.result) for r in log.records()]
    assert ("model.pull", "gemma3-270m:1", "ok") in actions
    decisions = [r for r in log.records() if r.action == "promotion"]
    assert [r.result for r in decisions] == ["denied", "ok"]
    assert decisions[1].before == "gemma3-270m:1@llamacpp"
    assert decisions[1].after == "gemma3-270m-twin:1@llamacpp"
