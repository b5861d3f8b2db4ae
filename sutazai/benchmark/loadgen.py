"""A load generator for any OpenAI-compatible completions endpoint.

Requests stream (``stream_options.include_usage``) so that the first token and every
inter-token gap are seen as they arrive; aiohttp reads the streams, as ``vllm bench serve``
does (httpx's per-chunk cost halved the measured throughput of a fast engine). Warm-up
requests go first and are not recorded. Arrivals are sequential, at a fixed concurrency,
or Poisson at a rate (seeded), always under a concurrency cap. When the endpoint stops
answering (connection refused or cut, as when an engine dies), no further request is sent
and the result is marked incomplete, keeping every record made until then.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable

import aiohttp
from pydantic import BaseModel

from sutazai.benchmark.metrics import SLO, RequestRecord, ServingMetrics, compute_metrics
from sutazai.benchmark.profiles import LoadProfile
from sutazai.errors import BenchmarkError


class LoadResult(BaseModel):
    """One load step: its records and the metrics computed from them."""

    concurrency: int
    rate: float | None
    records: list[RequestRecord]
    duration_s: float
    metrics: ServingMetrics
    incomplete: bool = False
    abort_reason: str = ""


def request_body(model: str, prompt: str, profile: LoadProfile) -> dict[str, object]:
    body: dict[str, object] = {
        "model": model, "prompt": prompt, "max_tokens": profile.output_tokens,
        "temperature": profile.temperature, "stream": True,
        "stream_options": {"include_usage": True},
    }
    if profile.fixed_output:
        body["ignore_eos"] = True  # vLLM honours it; engines that do not ignore the field
    return body


class _Abort:
    def __init__(self) -> None:
        self.reason = ""

    def __bool__(self) -> bool:
        return bool(self.reason)


async def _send(session: aiohttp.ClientSession, url: str, body: dict[str, object],
                index: int, origin: float, abort: _Abort) -> RequestRecord:
    """One streamed request, timed as ``vllm bench serve`` times it: the first chunk that
    carries ``choices`` (even with empty text) is the first token, each later one adds an
    inter-token gap, and the token count is the server's ``usage``."""
    sent = time.perf_counter()
    record = RequestRecord(index=index, sent=sent - origin)
    chunks = 0
    last = sent
    finished = False
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                text = await response.text(errors="replace")
                record.error = f"HTTP {response.status}: {text[:300]}"
                if response.status in (502, 503):  # a gateway whose engine is gone
                    abort.reason = abort.reason or f"the engine stopped answering ({text[:200]})"
                return record
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    finished = True
                    break
                payload = json.loads(data)
                now = time.perf_counter()
                if payload.get("choices"):
                    if record.ttft is None:
                        record.ttft = now - sent
                    else:
                        record.itl.append(now - last)
                    last = now
                    chunks += 1
                usage = payload.get("usage")
                if usage:
                    record.output_tokens = int(usage.get("completion_tokens") or 0)
                    record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        record.latency = time.perf_counter() - sent
        record.output_tokens = record.output_tokens or chunks
        record.success = record.ttft is not None and finished
        if record.ttft is None:
            record.error = "the stream ended without any token"
        elif not finished:
            record.error = f"the stream was cut after {chunks} chunk(s), before [DONE]"
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
        abort.reason = abort.reason or f"the endpoint stopped answering ({record.error})"
    except ValueError as exc:  # a malformed stream
        record.error = f"unreadable stream: {exc}"
    return record


async def _run_step(base_url: str, model: str, prompts: list[str], profile: LoadProfile,
                    concurrency: int, slo: SLO | None,
                    on_done: Callable[[], None]) -> LoadResult:
    url = f"{base_url.rstrip('/')}/v1/completions"
    abort = _Abort()
    connector = aiohttp.TCPConnector(limit=concurrency + 4, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for prompt in prompts[:profile.warmup]:
            await _send(session, url, request_body(model, prompt, profile), -1, 0.0, abort)
        if abort:
            return _result(concurrency, profile, [], 1e-9, slo, abort)
        gate = asyncio.Semaphore(concurrency)
        rng = random.Random(profile.seed)
        origin = time.perf_counter()
        records: list[RequestRecord] = []

        async def one(index: int, prompt: str) -> None:
            async with gate:
                if abort:
                    return
                records.append(await _send(session, url, request_body(model, prompt, profile),
                                           index, origin, abort))
                on_done()

        tasks = []
        for index, prompt in enumerate(prompts[profile.warmup:]):
            if abort:
                break
            if profile.mode == "poisson" and profile.rate and index:
                await asyncio.sleep(rng.expovariate(profile.rate))
            tasks.append(asyncio.create_task(one(index, prompt)))
        await asyncio.gather(*tasks)
        duration = time.perf_counter() - origin
    records.sort(key=lambda r: r.index)
    return _result(concurrency, profile, records, duration, slo, abort)


def _result(concurrency: int, profile: LoadProfile, records: list[RequestRecord],
            duration: float, slo: SLO | None, abort: _Abort) -> LoadResult:
    return LoadResult(
        concurrency=concurrency, rate=profile.rate if profile.mode == "poisson" else None,
        records=records, duration_s=duration,
        metrics=compute_metrics(records, max(duration, 1e-9), slo),
        incomplete=bool(abort), abort_reason=abort.reason,
    )


def run_load(base_url: str, model: str, prompts: list[str], profile: LoadProfile,
             slo: SLO | None = None, on_done: Callable[[], None] = lambda: None
             ) -> list[LoadResult]:
    """Drive ``base_url`` with ``profile``: one result per concurrency level.

    ``prompts`` holds ``profile.warmup`` warm-up prompts followed by ``num_prompts``
    measured ones. A step that is cut short ends the sweep.
    """
    needed = profile.warmup + profile.num_prompts
    if len(prompts) < needed:
        raise BenchmarkError(f"profile {profile.name!r} needs {needed} prompts ({profile.warmup} "
                             f"warm-up + {profile.num_prompts}), got {len(prompts)}")
    prompts = prompts[:needed]
    results = []
    for level in profile.levels():
        result = asyncio.run(_run_step(base_url, model, prompts, profile, level, slo, on_done))
        results.append(result)
        if result.incomplete:
            break
    return results
