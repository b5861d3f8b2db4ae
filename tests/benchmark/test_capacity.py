"""Capacity planning: the sweep and the plan on known numbers, then end to end on the
synthetic server, whose capacity is known (slots / service time), with the plan checked
against replicas behind a real nginx."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sutazai.benchmark.capacity import RateStep, curve_of, plan, sweep
from sutazai.benchmark.metrics import SLO
from sutazai.benchmark.profiles import LoadProfile
from sutazai.benchmark.synthetic_server import Timing, serve_in_subprocess
from sutazai.config import Settings
from sutazai.serving.balancer import round_robin
from sutazai.workflows.capacity import measure_curve, stepper


def step(rate: float, capacity: float = 10.0, tokens: int = 16) -> RateStep:
    """A replica that meets the SLOs up to ``capacity`` req/s (TTFT grows near it)."""
    ok = rate <= capacity
    return RateStep(rate=rate, requests=40, completed=40, throughput_rps=min(rate, capacity),
                    input_tokens_per_s=rate * 12, output_tokens_per_s=rate * tokens,
                    ttft_p95_ms=50 + 40 * rate / capacity, tpot_p95_ms=5.0,
                    e2el_p95_ms=200.0, good_ratio=1.0 if ok else 0.4, meets_slo=ok,
                    why="" if ok else "P95 TTFT 140 ms > 100 ms")


def test_the_sweep_grows_until_a_step_fails_then_bisects_twice() -> None:
    steps = sweep(step, 2.0)
    rates = [round(s.rate, 2) for s in steps]
    assert rates == [2.0, 3.2, 5.12, 8.19, 9.21, 10.36, 13.11]  # 8.19 passes, 10.36 fails
    curve = curve_of("m:1@llama.cpp", steps)
    assert curve.max_rate_rps == steps[4].rate and curve.limit_found
    down = sweep(lambda rate: step(rate, capacity=1.0), 2.0)  # the first step fails: go down
    assert [round(s.rate, 2) for s in down] == [0.78, 0.99, 1.11, 1.25, 2.0]
    assert curve_of("m", down).max_rate_rps == down[1].rate


def test_the_plan_names_replicas_headroom_ttft_and_cost() -> None:
    curve = curve_of("m:1@llama.cpp", sweep(step, 2.0))
    top = curve.max_rate_rps  # 9.21 req/s
    result = plan(curve, 20.0, price_per_hour=0.36, currency="USD")
    assert result.replicas == 3 == math.ceil(20 / top)
    assert result.headroom == pytest.approx(1 - (20 / 3) / top)
    assert 50 < (result.predicted_ttft_p95_ms or 0) < 90  # interpolated at 6.67 req/s
    # 0.36 per hour over top * 16 tokens/s, per million tokens
    assert result.cost_per_1m_output == pytest.approx(0.36 / (top * 16 * 3600) * 1e6)
    unpriced = plan(curve, 20.0)
    assert unpriced.cost_per_1m_output is None
    assert any("no price" in n for n in unpriced.notes)
    never = plan(curve_of("slow", [step(r, capacity=0.1) for r in (1.0, 0.5)]), 5.0)
    assert never.replicas is None
    assert "meets the SLOs at no rate tried; closest: 0.50 req/s" in never.notes[0]
    unbounded = plan(curve_of("fast", [step(r, capacity=99) for r in (1.0, 2.0)]), 5.0)
    assert unbounded.replicas == 3 and any("lower bound" in n for n in unbounded.notes)


def test_the_planned_replicas_meet_the_slo_and_one_fewer_does_not(tmp_path: Path) -> None:
    """Synthetic replicas with 2 slots and a 48 ms service time (capacity 41.7 req/s): the
    sweep finds a sustainable rate below that, and at 1.6x it, 2 replicas behind nginx
    meet the SLO while 1 does not."""
    timing = Timing(ttft_s=0.02, tpot_s=0.004, slots=2, jitter=0.1)
    profile = LoadProfile(name="capacity-test", mode="sequential", output_tokens=8,
                          input_words=6, warmup=1)
    slo = SLO(ttft_p95_ms=60.0)
    prompts = [f"prompt number {i} about capacity" for i in range(64)]
    with serve_in_subprocess(timing) as first, serve_in_subprocess(timing) as second:
        curve = measure_curve(first, "synthetic", "synthetic", profile, slo, prompts,
                              step_seconds=2.0)
        assert curve.limit_found and 8 < curve.max_rate_rps < 2 / 0.048
        target = 1.6 * curve.max_rate_rps
        planned = plan(curve, target)
        assert planned.replicas == 2
        run = stepper(first, "synthetic", profile, slo, prompts, step_seconds=4.0)
        assert not run(target).meets_slo  # one replica, the whole target
        with round_robin([first, second], tmp_path / "nginx") as balanced:
            two = stepper(balanced, "synthetic", profile, slo, prompts, step_seconds=4.0)
            measured = two(target)
        assert measured.meets_slo, measured.why


def test_the_capacity_table_shows_cost_only_with_a_price(settings: Settings) -> None:
    from rich.console import Console

    from sutazai.cli.bench import capacity_table
    from sutazai.errors import NotFoundError
    from sutazai.workflows.capacity import capacity_plans

    curve = curve_of("m:1@llamacpp", sweep(step, 2.0))

    def render(price: float | None) -> str:
        console = Console(width=140, record=True)
        console.print(capacity_table([plan(curve, 20.0, price_per_hour=price,
                                           currency="USD")], "cpu-node"))
        return console.export_text()

    priced, unpriced = render(0.36), render(None)
    assert "USD/1M out" in priced and "0.6784" in priced  # 0.36 / (9.2134*16*3600) * 1e6
    assert "1M" not in unpriced and "9.21" in unpriced and "3" in unpriced
    with pytest.raises(NotFoundError, match="no champion to plan for"):
        capacity_plans(settings, "text-generation", 5.0)
