"""The load generator against ground truth: a synthetic server (its own process on 127.0.0.1)
streams on a known schedule, so what the client should measure is computed, not guessed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sutazai.benchmark.loadgen import run_load
from sutazai.benchmark.metrics import ServingMetrics
from sutazai.benchmark.profiles import LoadProfile
from sutazai.benchmark.synthetic_server import Timing, serve_in_subprocess, simulate

TIMING = Timing(ttft_s=0.100, tpot_s=0.010, jitter=0.2, seed=3)
QUEUED = Timing(ttft_s=0.050, tpot_s=0.010, slots=2, jitter=0.2, seed=3)
TOKENS = 16
PROMPTS = [f"prompt {i}: the quick brown fox jumps over the lazy dog" for i in range(2 + 16)]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_in_subprocess(TIMING) as url:
        yield url


def _close(measured: float | None, true: float | None, rel: float, abs_ms: float = 0.0) -> bool:
    assert measured is not None and true is not None
    return abs(measured - true) <= rel * true + abs_ms


def _check(measured: ServingMetrics, truth: ServingMetrics) -> None:
    """Within tolerances wide enough for a shared 2-core machine (the full suite once read
    mean TTFT +7 % at concurrency 4) and far narrower than the faults they guard against: a
    client that buffers the stream reads TPOT near 0 and TTFT near the whole request, one
    that queues reads TTFT several times too high. The precise figures (1-2 % off the truth
    on an idle machine) are benchmarks/harness_truth.py's job, not a unit test's."""
    for got, want in ((measured.ttft.mean_ms, truth.ttft.mean_ms),
                      (measured.ttft.p95_ms, truth.ttft.p95_ms)):
        assert _close(got, want, 0.15, abs_ms=5.0), (got, want)
    for got, want in ((measured.tpot.mean_ms, truth.tpot.mean_ms),
                      (measured.tpot.p95_ms, truth.tpot.p95_ms),
                      (measured.itl.median_ms, truth.itl.median_ms)):
        assert _close(got, want, 0.10), (got, want)
    assert _close(measured.output_throughput, truth.output_throughput, 0.10), (
        measured.output_throughput, truth.output_throughput)
    assert measured.completed == truth.completed
    assert measured.total_output_tokens == truth.total_output_tokens


def _measure(url: str, concurrency: int, n: int) -> ServingMetrics:
    profile = LoadProfile(name="truth", mode="concurrency", concurrency=concurrency,
                          num_prompts=n, output_tokens=TOKENS, warmup=2)
    [step] = run_load(url, "synthetic", PROMPTS[:2 + n], profile)
    return step.metrics


def test_simulate_knows_the_schedule() -> None:
    """Two clients, one slot, no jitter: the second request waits for the first."""
    timing = Timing(ttft_s=0.1, tpot_s=0.01, slots=1)
    truth = simulate(timing, ["a", "b", "c", "d"], output_tokens=11, concurrency=2)
    assert truth.ttft.mean_ms == pytest.approx((100 + 300 + 300 + 300) / 4)
    assert truth.tpot.mean_ms == pytest.approx(10)
    assert truth.duration_s == pytest.approx(0.8)
    assert truth.output_throughput == pytest.approx(44 / 0.8)
    jittered = Timing(ttft_s=0.1, tpot_s=0.01, jitter=0.2, seed=1)
    assert jittered.for_prompt("a") == jittered.for_prompt("a") != jittered.for_prompt("b")


def test_sequential_matches_the_truth(server: str) -> None:
    _check(_measure(server, 1, 8), simulate(TIMING, PROMPTS[2:10], TOKENS, 1))


def test_concurrency_4_matches_the_truth(server: str) -> None:
    _check(_measure(server, 4, 16), simulate(TIMING, PROMPTS[2:18], TOKENS, 4))


def test_queueing_shows_in_ttft() -> None:
    """Four in flight on two slots: half of each wave waits a whole request in the queue."""
    with serve_in_subprocess(QUEUED) as url:
        measured = _measure(url, 4, 12)
    truth = simulate(QUEUED, PROMPTS[2:14], TOKENS, 4)
    assert truth.ttft.p95_ms is not None and truth.ttft.p95_ms > 150  # the wait is in it
    _check(measured, truth)
