"""Serving metrics computed from per-request records, defined as ``vllm bench serve`` does.

- TTFT: request sent to first token received.
- TPOT: per request, ``(e2e - ttft) / (output_tokens - 1)``; requests with one token are
  left out.
- ITL: the gaps between consecutive streamed chunks, pooled over all requests.
- E2EL: request sent to last byte received.
- Request and output-token throughput: completed requests (tokens) over the benchmark's
  wall time; goodput: requests that met every declared SLO over the same time.

Percentiles use linear interpolation (``numpy.percentile``), as vLLM does.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

PERCENTILES = (50, 90, 95, 99)


class RequestRecord(BaseModel):
    """One request of a benchmark; times are seconds since the benchmark started."""

    index: int
    sent: float
    ttft: float | None = None  # seconds after ``sent``
    latency: float | None = None  # seconds after ``sent``, to the last byte
    itl: list[float] = Field(default_factory=list)  # gaps between streamed chunks
    prompt_tokens: int = 0
    output_tokens: int = 0
    success: bool = False
    error: str = ""

    @property
    def tpot(self) -> float | None:
        if not self.success or self.ttft is None or self.latency is None:
            return None
        if self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


class Distribution(BaseModel):
    """Mean, median, standard deviation and percentiles, in milliseconds."""

    count: int
    mean_ms: float | None
    median_ms: float | None
    std_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Distribution:
        if not seconds:
            return cls(count=0, mean_ms=None, median_ms=None, std_ms=None, p90_ms=None,
                       p95_ms=None, p99_ms=None)
        import numpy as np  # here, not at the top: settings import this module at start-up

        ms = np.asarray(seconds, dtype=float) * 1000.0
        p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, PERCENTILES))
        return cls(count=len(ms), mean_ms=float(ms.mean()), median_ms=p50,
                   std_ms=float(ms.std()), p90_ms=p90, p95_ms=p95, p99_ms=p99)


class SLO(BaseModel):
    """Service-level objectives a request (goodput) or a candidate (selection) must meet."""

    ttft_p95_ms: float | None = Field(default=None, gt=0)
    tpot_p95_ms: float | None = Field(default=None, gt=0)
    e2el_p95_ms: float | None = Field(default=None, gt=0)
    max_memory_mib: float | None = Field(default=None, gt=0)
    min_quality: float | None = None

    def params(self) -> dict[str, float]:
        """The declared limits as MLflow params (``slo.ttft_p95_ms``...)."""
        return {f"slo.{k}": v for k, v in self.model_dump().items() if v is not None}

    def request_ok(self, record: RequestRecord) -> bool:
        """Whether one request met the per-request limits (vLLM's ``--goodput``)."""
        if not record.success:
            return False
        checks = [
            (self.ttft_p95_ms, record.ttft),
            (self.tpot_p95_ms, record.tpot),
            (self.e2el_p95_ms, record.latency),
        ]
        return all(value is not None and value * 1000.0 <= limit
                   for limit, value in checks if limit is not None)


class ServingMetrics(BaseModel):
    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    goodput: float | None
    max_concurrent_requests: int
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2el: Distribution

    def flat(self, prefix: str = "") -> dict[str, float]:
        """Numbers only, for MLflow metrics (``ttft_p95_ms``, ``output_throughput``...)."""
        out: dict[str, float] = {}
        for key in ("completed", "failed", "duration_s", "total_input_tokens",
                    "total_output_tokens", "request_throughput", "output_throughput",
                    "total_token_throughput", "goodput", "max_concurrent_requests"):
            value = getattr(self, key)
            if value is not None:
                out[prefix + key] = float(value)
        for name in ("ttft", "tpot", "itl", "e2el"):
            for stat, value in getattr(self, name).model_dump().items():
                if stat != "count" and value is not None:
                    out[f"{prefix}{name}_{stat}"] = float(value)
        return out


def max_in_flight(records: Sequence[RequestRecord]) -> int:
    events = []
    for record in records:
        if record.latency is not None:
            events += [(record.sent, 1), (record.sent + record.latency, -1)]
    level = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        level += step
        peak = max(peak, level)
    return peak


def compute_metrics(records: Sequence[RequestRecord], duration_s: float,
                    slo: SLO | None = None) -> ServingMetrics:
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    ok = [r for r in records if r.success]
    output_tokens = sum(r.output_tokens for r in ok)
    input_tokens = sum(r.prompt_tokens for r in ok)
    has_request_slo = slo is not None and any(
        v is not None for v in (slo.ttft_p95_ms, slo.tpot_p95_ms, slo.e2el_p95_ms))
    goodput = (sum(slo.request_ok(r) for r in ok) / duration_s
               if slo is not None and has_request_slo else None)
    return ServingMetrics(
        completed=len(ok), failed=len(records) - len(ok), duration_s=duration_s,
        total_input_tokens=input_tokens, total_output_tokens=output_tokens,
        request_throughput=len(ok) / duration_s,
        output_throughput=output_tokens / duration_s,
        total_token_throughput=(input_tokens + output_tokens) / duration_s,
        goodput=goodput, max_concurrent_requests=max_in_flight(ok),
        ttft=Distribution.of([r.ttft for r in ok if r.ttft is not None]),
        tpot=Distribution.of([t for r in ok if (t := r.tpot) is not None]),
        itl=Distribution.of([gap for r in ok for gap in r.itl]),
        e2el=Distribution.of([r.latency for r in ok if r.latency is not None]),
    )
