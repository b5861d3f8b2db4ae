"""Selection on synthetic candidates: SLO filtering, the Pareto front, weights, tie-breaks,
and the explanation. Numbers for the two engines are the ones measured on this machine
kind (llama.cpp vs vLLM on Gemma 3 270M, see PLATFORM-FACTS)."""

from __future__ import annotations

import pytest

from sutazai.benchmark.metrics import SLO
from sutazai.selection.rules import Candidate, Weights, dominates, select, slo_misses


def candidate(engine: str, concurrency: int, ttft: float | None, throughput: float,
              memory: float | None = 600.0, quality: float | None = 0.8,
              e2e: float | None = 300.0, model: str = "gemma3-270m") -> Candidate:
    return Candidate(model=model, version=1, engine=engine, concurrency=concurrency,
                     ttft_p95_ms=ttft, e2el_p95_ms=e2e, tpot_p95_ms=15.0,
                     output_throughput=throughput, memory_mib=memory, quality=quality)


LLAMA = candidate("llamacpp", 1, ttft=25.0, throughput=72.0, memory=600.0)
VLLM_1 = candidate("vllm", 1, ttft=60.0, throughput=52.0, memory=6000.0)
VLLM_8 = candidate("vllm", 8, ttft=180.0, throughput=269.0, memory=6000.0, e2e=900.0)


def test_latency_slo_picks_llamacpp_and_says_why_vllm_lost() -> None:
    decision = select("text-generation", [VLLM_8, LLAMA, VLLM_1],
                      SLO(ttft_p95_ms=100.0), Weights())
    assert decision.winner == LLAMA
    assert decision.challenger == VLLM_1
    assert decision.rejected == {VLLM_8.label: ["P95 TTFT 180.0 ms > 100 ms"]}
    text = decision.explanation
    assert f"**champion** {LLAMA.label}" in text
    assert f"challenger {VLLM_1.label}: dominated by {LLAMA.label}" in text
    assert f"rejected {VLLM_8.label}: misses the SLOs: P95 TTFT 180.0 ms > 100 ms" in text


def test_throughput_profile_picks_vllm_with_8_streams() -> None:
    """Without a TTFT limit and with throughput weighted, batching wins."""
    decision = select("text-generation", [LLAMA, VLLM_1, VLLM_8],
                      SLO(e2el_p95_ms=2000.0),
                      Weights(quality=1, ttft=0.2, throughput=3, memory=0))
    assert decision.winner == VLLM_8
    assert decision.challenger == LLAMA
    assert not decision.rejected


def test_memory_budget_and_quality_floor_reject_with_numbers() -> None:
    weak = candidate("llamacpp", 1, ttft=20.0, throughput=90.0, quality=0.3, model="tiny")
    decision = select("text-generation", [LLAMA, VLLM_8, weak],
                      SLO(max_memory_mib=4096, min_quality=0.5), Weights())
    assert decision.winner == LLAMA and decision.challenger is None
    assert decision.rejected[VLLM_8.label] == ["peak memory 6000.0 MiB > 4096 MiB"]
    assert decision.rejected[weak.label] == ["quality 0.300 < 0.5"]


def test_unmeasured_values_fail_a_declared_slo() -> None:
    blind = candidate("ollama", 1, ttft=None, throughput=50.0, memory=None)
    assert slo_misses(blind, SLO(ttft_p95_ms=100, max_memory_mib=1000)) == [
        "P95 TTFT was not measured (limit 100 ms)",
        "peak memory was not measured (limit 1000 MiB)",
    ]
    assert slo_misses(blind, SLO()) == []


def test_no_feasible_candidate_means_no_champion() -> None:
    decision = select("text-generation", [VLLM_8], SLO(ttft_p95_ms=50), Weights())
    assert decision.winner is None and decision.challenger is None
    assert "No candidate meets the SLOs" in decision.explanation


def test_ties_break_deterministically_whatever_the_input_order() -> None:
    a = candidate("llamacpp", 1, ttft=30.0, throughput=70.0, model="model-a")
    b = candidate("llamacpp", 1, ttft=30.0, throughput=70.0, model="model-b")
    first = select("t", [a, b], SLO(), Weights())
    second = select("t", [b, a], SLO(), Weights())
    assert first.winner == second.winner == a
    assert "lost on the tie-break" in first.explanation


@pytest.mark.parametrize(("x", "y", "expected"), [
    (LLAMA, VLLM_1, True),   # faster, more throughput, less memory, same quality
    (VLLM_1, LLAMA, False),
    (LLAMA, VLLM_8, False),  # VLLM_8 has more throughput
    (LLAMA, LLAMA, False),   # nothing dominates itself
])
def test_dominance(x: Candidate, y: Candidate, expected: bool) -> None:
    assert dominates(x, y) is expected


def test_a_cost_weight_prefers_the_cheaper_hardware_when_asked() -> None:
    """Two profiles: a GPU node serves 4x the tokens at 30x the price. Off by default, the
    selection ignores price; with a cost weight the cheaper tokens win."""
    from sutazai.benchmark.profiles import get_profile
    from sutazai.benchmark.runner import BenchmarkSummary, StepSummary
    from sutazai.selection.store import candidates

    def summary(model: str, hardware: str, throughput: float) -> BenchmarkSummary:
        step = StepSummary(concurrency=1, completed=24, failed=0, ttft_p95_ms=40.0,
                           tpot_p95_ms=10.0, e2el_p95_ms=300.0, ttft_p50_ms=30.0,
                           ttft_p99_ms=45.0, request_throughput=throughput / 16,
                           output_throughput=throughput, goodput=None)
        return BenchmarkSummary(model=model, version=1, digest="d", task="text-generation",
                                engine="llama.cpp", profile=get_profile("latency"),
                                steps=[step], quality=None, load_seconds=1.0,
                                peak_rss_bytes=None, size_bytes=1, hardware_profile=hardware)

    prices = {"cpu-node": 0.10, "a100-80g": 3.00}
    pool = candidates([summary("on-cpu", "cpu-node", 50.0), summary("on-gpu", "a100-80g", 200.0),
                       summary("unpriced", "tpu", 500.0)], "text-generation", prices)
    cost = {c.model: c.cost_per_1m_output for c in pool}
    assert cost["on-cpu"] == pytest.approx(0.10 / (50 * 3600) * 1e6)
    assert cost["on-gpu"] == pytest.approx(3.00 / (200 * 3600) * 1e6)
    assert cost["unpriced"] is None
    priced = [c for c in pool if c.model != "unpriced"]
    plain = select("text-generation", priced, SLO(), Weights(quality=0, memory=0))
    assert plain.winner is not None and plain.winner.model == "on-gpu"
    frugal = select("text-generation", priced, SLO(),
                    Weights(quality=0, memory=0, ttft=0, throughput=0.1, cost=1))
    assert frugal.winner is not None and frugal.winner.model == "on-cpu"
    assert "cost 1." in frugal.explanation
