"""What the gateway measures of every request, whatever engine serves it (Prometheus).

Engines differ in what they measure (llama-cpp-python exports no metrics at all), so the
gateway counts end-to-end latency, time to first token (first streamed text), output
tokens and their rate, input (prompt) tokens, and requests in flight itself, the same way
for every engine.

Input tokens come only from the usage the engine reports (``prompt_tokens``): the gateway
has no tokenizer. Every non-streamed answer carries usage; a stream does when the client
asked for it (``stream_options.include_usage``), or the engine adds it anyway. Output tokens
fall back to the streamed chunks with text; input tokens have no such fallback.

The price of the node a replica runs on (setting ``hardware_costs`` for the gateway's
``hardware_profile``) is exported as ``sutazai_hardware_cost_per_hour{profile,currency}``,
and only when it is configured: with no price there is no series, never a zero, so the cost
recording rules (``infra/prometheus/recording.yml``) have nothing to divide and leave the
cost out.

Request series carry the ``model`` that answered (the id a client names it by), so one
gateway in front of several models (:mod:`sutazai.serving.multi`) still says which model is
slow; residency has series of its own (loads, evictions, models loaded). ``model`` is ""
for a request refused before it was routed (bad JSON, unknown model): callers choose the
name, and a label from user input would let them grow the series without bound.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sutazai.serving.engines import RunningEngine

if TYPE_CHECKING:
    from sutazai.config import Settings

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2, 2.5, 5, 10, 30, 60)
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5)
RATE_BUCKETS = (1, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000)


class GatewayMetrics:
    """The Prometheus series of one gateway, in a registry of its own."""

    def __init__(self, engine: RunningEngine | None = None) -> None:
        self.registry = CollectorRegistry()
        labels = ["endpoint", "model"]
        self.requests = Counter("sutazai_requests", "Requests answered, by endpoint and status",
                                [*labels, "status"], registry=self.registry)
        self.latency = Histogram("sutazai_request_duration_seconds",
                                 "End-to-end request latency", labels,
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("sutazai_time_to_first_token_seconds",
                              "Time to the first streamed token", labels,
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.output_tokens = Counter("sutazai_output_tokens", "Generated tokens", labels,
                                     registry=self.registry)
        self.input_tokens = Counter("sutazai_input_tokens", "Prompt tokens, as the engine "
                                    "reported them (usage.prompt_tokens)", labels,
                                    registry=self.registry)
        self.hardware_cost = Gauge("sutazai_hardware_cost_per_hour", "Price per hour of the "
                                   "node this replica runs on (setting hardware_costs); no "
                                   "series when it has no price", ["profile", "currency"],
                                   registry=self.registry)
        self.tokens_per_second = Histogram(
            "sutazai_output_tokens_per_second", "Per-request decode rate after the first token",
            labels, buckets=RATE_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("sutazai_requests_in_flight", "Requests being answered",
                               registry=self.registry)
        self.info = Gauge("sutazai_model_info", "The model version and engine being served",
                          ["model", "version", "engine", "digest"], registry=self.registry)
        self.swaps = Counter("sutazai_model_swaps", "Times a new champion replaced the served "
                             "model without a restart", registry=self.registry)
        self.engine_restarts = Counter("sutazai_engine_restarts",
                                       "Restarts of a dead engine the gateway tried, by outcome "
                                       "(ok, failed)", ["outcome"], registry=self.registry)
        self.engine_up = Gauge("sutazai_engine_up", "1 while the engine process behind the "
                               "gateway runs, 0 while it is dead or restarting",
                               registry=self.registry)
        self.engine_up.set(1)
        self._up: dict[str, bool] = {}
        self.loads = Counter("sutazai_model_loads", "Engine starts for a model a request "
                             "asked for, by model and outcome (ok, failed)",
                             ["model", "outcome"], registry=self.registry)
        self.evictions = Counter("sutazai_model_evictions", "Idle engines stopped to make "
                                 "room in the memory budget, by model", ["model"],
                                 registry=self.registry)
        self.models_loaded = Gauge("sutazai_models_loaded", "Models with an engine running "
                                   "behind the gateway", registry=self.registry)
        self.model_memory = Gauge("sutazai_model_memory_bytes", "Memory the budget counted "
                                  "for each loaded model when it loaded (its peak RSS from an "
                                  "earlier load, else the estimate)", ["model"],
                                  registry=self.registry)
        if engine is not None:
            self.models_loaded.set(1)
            self.show_model(engine)

    def show_cost(self, settings: Settings) -> None:
        """``sutazai_hardware_cost_per_hour`` from the settings, only when the gateway's
        hardware profile has a price (none: no series at all, so no cost is made up)."""
        price = settings.hardware_costs.get(settings.hardware_profile)
        if price is not None:
            self.hardware_cost.labels(settings.hardware_profile,
                                      settings.cost_currency).set(price)

    def set_up(self, model: str, up: bool) -> None:
        """``sutazai_engine_up``: 1 while every engine the gateway runs is up."""
        self._up[model] = up
        self.engine_up.set(1 if all(self._up.values()) else 0)

    def forget_up(self, model: str) -> None:
        self._up.pop(model, None)

    def forget(self, engine: RunningEngine, model: str) -> None:
        """An engine stopped on purpose (evicted): its series of being loaded go."""
        self._up.pop(model, None)
        self.engine_up.set(1 if all(self._up.values()) else 0)
        manifest = engine.manifest
        with contextlib.suppress(KeyError):
            self.info.remove(manifest.name, str(manifest.version), engine.engine,
                             manifest.digest)
        with contextlib.suppress(KeyError):
            self.model_memory.remove(model)

    def show_model(self, engine: RunningEngine, previous: RunningEngine | None = None) -> None:
        if previous is not None:
            old = previous.manifest
            self.info.remove(old.name, str(old.version), previous.engine, old.digest)
            self.swaps.inc()
        manifest = engine.manifest
        self.info.labels(manifest.name, str(manifest.version), engine.engine,
                         manifest.digest).set(1)


@dataclass
class Tally:
    """What one streamed response has shown so far."""

    started: float
    first_token: float | None = None
    chunks_with_text: int = 0
    usage_tokens: int | None = None
    prompt_tokens: int | None = None
    buffer: bytes = b""
    broken: bool = False
    text: list[str] = field(default_factory=list)

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        *events, self.buffer = self.buffer.split(b"\n\n")
        for event in events:
            for line in event.splitlines():
                if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
                    self._data(line[5:])

    def _data(self, raw: bytes) -> None:
        try:
            payload = json.loads(raw)
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        self.read_usage(payload.get("usage"))
        for choice in payload.get("choices") or ():
            delta = choice.get("delta") or {}
            piece = choice.get("text") or delta.get("content")
            if piece:
                self.text.append(str(piece))
            if piece or delta.get("reasoning_content"):
                self.chunks_with_text += 1
                if self.first_token is None:
                    self.first_token = time.perf_counter()

    def read_usage(self, usage: object) -> None:
        """The token counts of an OpenAI ``usage`` object (a streamed one may come in every
        chunk, cumulative: the last one wins)."""
        if not isinstance(usage, dict):
            return
        with contextlib.suppress(ValueError, TypeError):
            if usage.get("completion_tokens") is not None:
                self.usage_tokens = int(usage["completion_tokens"])
        with contextlib.suppress(ValueError, TypeError):
            if usage.get("prompt_tokens") is not None:
                self.prompt_tokens = int(usage["prompt_tokens"])

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.chunks_with_text
