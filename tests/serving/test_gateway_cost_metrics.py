"""What the cost recording rules (infra/prometheus/recording.yml) need from the gateway:
input tokens as the engine reports them, for completions and chat, streamed and not, and the
node's price as a gauge only when one is configured.

The upstream is a stand-in OpenAI server (fixed usage numbers, no model): what is under test
is the gateway's counting, and a real engine would only add minutes. That the engines'
real usage objects have this shape is covered by test_serving.py and test_vllm_engine.py."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sutazai.config import Settings
from sutazai.serving.gateway import GatewayThread, create_app
from sutazai.serving.process import free_port
from sutazai.serving.service import Target, serving_many
from tests.helpers import upstream_engine

PROMPT_TOKENS = 5  # non-streamed answers
STREAM_PROMPT_TOKENS = 7  # streamed answers that carry usage
PIECES = ("Hi", " there")


def stand_in() -> Starlette:
    """Answers /v1/completions and /v1/chat/completions as vLLM does: usage in every JSON
    answer; in a stream only when asked (stream_options.include_usage), as a last chunk."""

    async def answer(request: Request) -> Response:
        body = json.loads(await request.body())
        chat = request.url.path.endswith("chat/completions")
        if not body.get("stream"):
            choice = ({"message": {"role": "assistant", "content": "".join(PIECES)}}
                      if chat else {"text": "".join(PIECES)})
            return JSONResponse({"model": "tiny", "choices": [choice], "usage": {
                "prompt_tokens": PROMPT_TOKENS, "completion_tokens": 3, "total_tokens": 8}})
        chunks: list[dict[str, object]] = [
            {"model": "tiny", "choices": [{"index": 0, "delta": {"content": piece}} if chat
                                          else {"index": 0, "text": piece}]}
            for piece in PIECES]
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({"model": "tiny", "choices": [], "usage": {
                "prompt_tokens": STREAM_PROMPT_TOKENS, "completion_tokens": len(PIECES),
                "total_tokens": STREAM_PROMPT_TOKENS + len(PIECES)}})

        async def events() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/completions", answer, methods=["POST"]),
                             Route("/v1/chat/completions", answer, methods=["POST"])])


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    with GatewayThread(stand_in(), "127.0.0.1", free_port()) as upstream:
        engine = dataclasses.replace(upstream_engine(upstream.url),
                                     capabilities=frozenset({"completions", "chat"}))
        with GatewayThread(create_app(engine), "127.0.0.1", free_port()) as served:
            yield served.url


def samples(url: str, name: str) -> dict[str, float]:
    """``name``'s samples at ``url``/metrics, by their label text."""
    found = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name):].rsplit(" ", 1)
            found[labels] = float(value)
    return found


def test_input_tokens_are_counted_from_the_engines_usage(gateway: str) -> None:
    usage = {"stream_options": {"include_usage": True}}
    for path, body in (("completions", {"prompt": "The capital of France is"}),
                       ("chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})):
        plain = httpx.post(f"{gateway}/v1/{path}", json=body)
        assert plain.status_code == 200, plain.text
        with_usage = httpx.post(f"{gateway}/v1/{path}", json={**body, "stream": True, **usage})
        assert with_usage.status_code == 200 and '"prompt_tokens"' in with_usage.text
    # a stream without usage: output tokens by chunk, no input tokens to count (no tokenizer)
    bare = httpx.post(f"{gateway}/v1/chat/completions",
                      json={"messages": [{"role": "user", "content": "Hi"}], "stream": True})
    assert bare.status_code == 200 and "prompt_tokens" not in bare.text

    expected = PROMPT_TOKENS + STREAM_PROMPT_TOKENS
    assert samples(gateway, "sutazai_input_tokens_total") == {
        '{endpoint="completions",model="tiny"}': expected,
        '{endpoint="chat/completions",model="tiny"}': expected}
    assert samples(gateway, "sutazai_output_tokens_total") == {
        '{endpoint="completions",model="tiny"}': 3 + len(PIECES),
        '{endpoint="chat/completions",model="tiny"}': 3 + 2 * len(PIECES)}
    # no price configured for this gateway (create_app alone): no series, not a zero
    assert samples(gateway, "sutazai_hardware_cost_per_hour") == {}


@pytest.mark.parametrize(("profile", "exported"), [
    ("a100-80g", {'{currency="EUR",profile="a100-80g"}': 3.67}),
    ("cpu-node", {}),  # hardware_costs has no price for it: no series at all
], ids=["priced", "unpriced"])
def test_the_price_is_exported_only_when_configured(settings: Settings, profile: str,
                                                    exported: dict[str, float]) -> None:
    """Through ``sutazai serve``'s wiring (service.py); nothing loads before a request."""
    settings = settings.model_copy(update={
        "hardware_profile": profile, "hardware_costs": {"a100-80g": 3.67},
        "cost_currency": "EUR"})
    manifest = upstream_engine("http://127.0.0.1:9").manifest
    with serving_many(settings, [Target(manifest)]) as (_, url):
        assert samples(url, "sutazai_hardware_cost_per_hour") == exported
