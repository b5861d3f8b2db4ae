"""A synthetic OpenAI-compatible streaming server whose timing is known by construction.

Why: a load generator can only be trusted once it has measured something whose answer is
known. A real engine's timing is unknown and moves with the client's own CPU use, so two
tools that disagree on it cannot tell which one is wrong. This server streams
``/v1/completions`` (``stream: true``, SSE chunks shaped like vLLM's, a final usage chunk,
``[DONE]``) on a fixed schedule: a request that enters a slot at ``start`` sends token ``k``
(0-based) at ``start + ttft + k * tpot``, where ``ttft`` and ``tpot`` are drawn per prompt
from a seeded jitter around their base values (the same prompt always gets the same timing,
whatever the order). With ``slots``, at most that many requests are served at once; the
others wait in arrival order, and the wait is part of their time to first token.

Tokens are sent at absolute deadlines, so a late wake-up delays one chunk and never the
ones after it; the server records how late each chunk left (``GET /stats``), which bounds
its own share of any error. :func:`simulate` computes, for a prompt list and a closed-loop
concurrency, the exact TTFT, TPOT, ITL and output throughput the schedule implies: the
ground truth a client should measure (less the loopback's tens of microseconds).

Run it on a port (``0`` picks a free one; the first line on stdout names the address)::

    python -m sutazai.benchmark.synthetic_server --port 0 --ttft-ms 50 --tpot-ms 10 \\
        [--slots N] [--jitter 0.2] [--seed 0] [--model synthetic]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import random
import selectors
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from sutazai.benchmark.metrics import RequestRecord, ServingMetrics, compute_metrics


@dataclass(frozen=True)
class Timing:
    """The server's schedule. ``jitter`` is relative: each prompt's TTFT and TPOT are the base
    times scaled by a factor drawn uniformly from ``[1 - jitter, 1 + jitter]``."""

    ttft_s: float = 0.05
    tpot_s: float = 0.01
    slots: int = 0  # 0: every request is served at once
    jitter: float = 0.0
    seed: int = 0

    def for_prompt(self, prompt: str) -> tuple[float, float]:
        """The (TTFT, TPOT) this server gives ``prompt``, in seconds, before any queueing."""
        if not self.jitter:
            return self.ttft_s, self.tpot_s
        rng = random.Random(zlib.crc32(prompt.encode()) ^ (self.seed * 0x9E3779B1))
        first = 1 + self.jitter * rng.uniform(-1, 1)
        per_token = 1 + self.jitter * rng.uniform(-1, 1)
        return self.ttft_s * first, self.tpot_s * per_token

    def args(self) -> list[str]:
        """Command-line arguments that reproduce this timing."""
        return ["--ttft-ms", repr(self.ttft_s * 1000), "--tpot-ms", repr(self.tpot_s * 1000),
                "--slots", str(self.slots), "--jitter", repr(self.jitter),
                "--seed", str(self.seed)]


def simulate(timing: Timing, prompts: Sequence[str], output_tokens: int,
             concurrency: int) -> ServingMetrics:
    """The exact metrics of ``prompts`` sent closed-loop at ``concurrency`` (each client sends
    its next prompt, in list order, the moment its last one ends), with no network cost."""
    clients = [0.0] * concurrency  # a heap of the times clients are free
    slot_free = [0.0] * (timing.slots or len(prompts) or 1)  # a heap of slot release times
    records = []
    for index, prompt in enumerate(prompts):
        sent = heapq.heappop(clients)
        start = max(sent, heapq.heappop(slot_free))
        ttft, tpot = timing.for_prompt(prompt)
        first = start + ttft
        end = first + (output_tokens - 1) * tpot
        heapq.heappush(slot_free, end)
        heapq.heappush(clients, end)
        records.append(RequestRecord(
            index=index, sent=sent, ttft=first - sent, latency=end - sent,
            itl=[tpot] * (output_tokens - 1), output_tokens=output_tokens, success=True))
    duration = max(r.sent + (r.latency or 0) for r in records) if records else 1e-9
    return compute_metrics(records, duration)


class _Stats:
    """What the server did: how late its chunks left, and per request (the last 10,000)
    ``time.perf_counter()`` stamps, comparable with a client's on the same Linux machine
    (both read CLOCK_MONOTONIC): handler entered, slot taken, first and last chunk written."""

    def __init__(self) -> None:
        self.requests = 0
        self.chunks = 0
        self.late_total = 0.0
        self.late_max = 0.0
        self.trace: list[tuple[float, float, float, float]] = []

    def as_dict(self) -> dict[str, object]:
        return {"requests": self.requests, "chunks": self.chunks,
                "late_mean_ms": 1000 * self.late_total / max(self.chunks, 1),
                "late_max_ms": 1000 * self.late_max, "trace": self.trace[-10000:]}


def make_app(timing: Timing, model: str = "synthetic") -> object:
    """The aiohttp application (imported here so that the metrics stay light to import)."""
    from aiohttp import web

    slots = asyncio.Semaphore(timing.slots) if timing.slots else None
    stats = _Stats()

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": model, "object": "model", "owned_by": "sutazai", "root": model}]})

    async def stats_view(_: web.Request) -> web.Response:
        return web.json_response(stats.as_dict())

    async def reset(_: web.Request) -> web.Response:
        stats.__init__()  # type: ignore[misc]
        return web.json_response({"ok": True})

    async def completions(request: web.Request) -> web.StreamResponse:
        received = time.perf_counter()
        body = await request.json()
        prompt = str(body.get("prompt", ""))
        n = int(body.get("max_tokens") or 16)
        if not body.get("stream"):
            return web.json_response({"error": "only stream: true is served"}, status=400)
        ttft, tpot = timing.for_prompt(prompt)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        if slots is not None:
            await slots.acquire()
        try:
            start = time.perf_counter()
            ident = f"cmpl-{stats.requests}"
            stats.requests += 1
            created = int(time.time())
            first = 0.0
            for k in range(n):
                deadline = start + ttft + k * tpot
                delay = deadline - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                chunk = {"id": ident, "object": "text_completion", "created": created,
                         "model": model, "choices": [{
                             "index": 0, "text": f" t{k}", "logprobs": None,
                             "finish_reason": "length" if k == n - 1 else None,
                             "stop_reason": None}], "usage": None}
                late = time.perf_counter() - deadline
                await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                stats.chunks += 1
                stats.late_total += max(late, 0.0)
                stats.late_max = max(stats.late_max, late)
                first = first or deadline + late
            stats.trace.append((received, start, first, time.perf_counter()))
        finally:
            if slots is not None:
                slots.release()
        prompt_tokens = len(prompt.split())
        usage = {"id": ident, "object": "text_completion", "created": created, "model": model,
                 "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                          "completion_tokens": n,
                                          "total_tokens": prompt_tokens + n}}
        await response.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats_view)
    app.router.add_post("/reset", reset)
    app.router.add_post("/v1/completions", completions)
    return app


async def _serve(timing: Timing, model: str, host: str, port: int) -> None:
    from aiohttp import web

    app = make_app(timing, model)
    assert isinstance(app, web.Application)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    server = site._server
    assert server is not None and isinstance(server, asyncio.base_events.Server)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"listening on http://{host}:{bound}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


@contextmanager
def serve_in_subprocess(timing: Timing, model: str = "synthetic",
                        python: str = sys.executable) -> Iterator[str]:
    """Run the server as its own process on 127.0.0.1 and yield its base URL."""
    process = subprocess.Popen(
        [python, "-m", "sutazai.benchmark.synthetic_server", "--port", "0", "--model", model,
         *timing.args()], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the synthetic server did not start: {line!r}")
        yield line.split()[-1]
    finally:
        process.terminate()
        process.wait(timeout=10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--model", default="synthetic")
    parser.add_argument("--ttft-ms", type=float, default=50.0)
    parser.add_argument("--tpot-ms", type=float, default=10.0)
    parser.add_argument("--slots", type=int, default=0)
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    timing = Timing(ttft_s=args.ttft_ms / 1000, tpot_s=args.tpot_ms / 1000, slots=args.slots,
                    jitter=args.jitter, seed=args.seed)
    # select() takes its timeout in microseconds; epoll (asyncio's default) rounds it up to
    # the millisecond, which sent chunks 0.6 ms late on average.
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(
            selectors.SelectSelector())) as runner, suppress(KeyboardInterrupt):
        runner.run(_serve(timing, args.model, args.host, args.port))


if __name__ == "__main__":
    main()
