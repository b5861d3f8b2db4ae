"""The knowledge base over the serving gateway: ``/v1/knowledge/ask`` and ``/search``, and the
model ``knowledge`` at ``/v1/chat/completions`` (the official ``openai`` client, streamed and
not), with keys, roles and metrics.

Real parts: three small documents ingested once into the real embedded FalkorDB (spaCy NER,
no relations; no embeddings model in the repository, so retrieval is full text and graph),
real gateways in uvicorn on 127.0.0.1, and a real key table. The chat engine is a stand-in
OpenAI-compatible server (``/v1/chat/completions`` with a fixed answer citing passage 1): a
real model would make the generated answer's words vary, and the point here is that the
gateway hands the question to the engine it serves and checks and returns its answer. A
gateway in front of a completions-only engine shows the extractive path; the multi-model
router is shown loading its chat champion for a question."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sutazai.config import Settings
from sutazai.knowledge.service import ingest
from sutazai.repository.manifest import Manifest
from sutazai.security.access import AccessGuard, KeyTable, new_key
from sutazai.serving.engines import RunningEngine
from sutazai.serving.gateway import KNOWLEDGE_MODEL, GatewayThread, create_app, routed_app
from sutazai.serving.multi import ModelRouter, RouterRouting
from sutazai.serving.process import free_port
from tests.helpers import upstream_engine
from tests.knowledge_helpers import write_corpus

pytestmark = pytest.mark.slow  # spaCy loads once for the ingest (~2 s)

ENGINE_ANSWER = "Jeff Bezos founded Amazon in Seattle [1]."


class ChatStandIn:
    """An OpenAI-compatible chat engine that answers every chat with ENGINE_ANSWER and
    keeps the messages it was sent."""

    def __init__(self) -> None:
        self.chats: list[list[dict[str, str]]] = []

        async def chat(request: Request) -> Response:
            body = json.loads(await request.body())
            self.chats.append(body["messages"])
            return JSONResponse({"id": "c1", "object": "chat.completion", "created": 0,
                                 "model": body.get("model"), "choices": [{
                                     "index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": ENGINE_ANSWER}}]})

        async def models(request: Request) -> Response:
            return JSONResponse({"object": "list", "data": [
                {"id": "tiny", "object": "model", "owned_by": "llamacpp"}]})

        async def health(request: Request) -> Response:
            return JSONResponse({"status": "ok"})

        self.app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                                     Route("/v1/models", models), Route("/health", health)])


@dataclasses.dataclass
class Served:
    settings: Settings
    engine: ChatStandIn
    engine_url: str
    chat_url: str  # a gateway serving the chat engine, with keys
    plain_url: str  # a gateway serving a completions-only engine, open
    operator: str  # keys
    viewer: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.operator}"}


def chat_engine(url: str) -> RunningEngine:
    return dataclasses.replace(upstream_engine(url),
                               capabilities=frozenset({"completions", "chat"}))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("knowledge-api")
    settings = Settings(home=root / ".sutazai", catalog=root / "catalog.yaml")
    report = ingest(settings, [str(write_corpus(root / "docs"))], relations="none")
    assert report.documents_ingested == 3, report
    (operator, operator_entry), (viewer, viewer_entry) = (
        new_key("kb-operator", "operator"), new_key("kb-viewer", "viewer"))
    table = settings.home / "secrets" / settings.api_keys_secret  # the file provider's layout
    table.parent.mkdir(parents=True, exist_ok=True)
    table.touch(mode=0o600)
    table.write_text(KeyTable(keys={operator_entry.id: operator_entry,
                                    viewer_entry.id: viewer_entry}).model_dump_json())
    engine = ChatStandIn()
    with GatewayThread(engine.app, "127.0.0.1", free_port()) as upstream, \
            GatewayThread(create_app(chat_engine(upstream.url), knowledge=settings,
                                     guard=AccessGuard(settings).require_keys()),
                          "127.0.0.1", free_port()) as chat, \
            GatewayThread(create_app(upstream_engine(upstream.url), knowledge=settings),
                          "127.0.0.1", free_port()) as plain:
        yield Served(settings, engine, upstream.url, chat.url, plain.url, operator, viewer)


def metric_lines(url: str, headers: dict[str, str], name: str) -> list[str]:
    text = httpx.get(f"{url}/metrics", headers=headers).text
    return [line for line in text.splitlines() if line.startswith(name)]


def test_ask_gives_the_served_chat_models_answer_with_its_cited_passages(
        served: Served) -> None:
    before = len(served.engine.chats)
    reply = httpx.post(f"{served.chat_url}/v1/knowledge/ask", headers=served.auth(),
                       json={"question": "Who founded Amazon?", "top": 3}, timeout=60)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["mode"] == "generated" and answer["answer"] == ENGINE_ANSWER
    assert answer["cited"] == [1] and answer["model"] == "tiny"
    cited = answer["passages"][0]
    assert "Jeff Bezos founded Amazon" in cited["text"]
    assert cited["citation"]["uri"].endswith("amazon.md")
    assert cited["citation"]["end"] > cited["citation"]["start"] >= 0
    assert any("vector search is off" in note for note in answer["notes"])
    [messages] = served.engine.chats[before:]  # the engine itself got the passages
    assert "Jeff Bezos founded Amazon" in messages[-1]["content"]
    assert "Who founded Amazon?" in messages[-1]["content"]

    requests = metric_lines(served.chat_url, served.auth(served.viewer), "sutazai_requests_total")
    assert any('endpoint="knowledge/ask",model="knowledge",status="200"' in line
               for line in requests), requests
    modes = metric_lines(served.chat_url, served.auth(served.viewer),
                         "sutazai_knowledge_answers_total")
    assert any('endpoint="knowledge/ask",mode="generated"' in line for line in modes), modes


def test_without_a_chat_engine_answers_are_extracted_and_search_reads_the_past(
        served: Served) -> None:
    reply = httpx.post(f"{served.plain_url}/v1/knowledge/ask",
                       json={"question": "Where was Marie Curie born?"}, timeout=60)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["mode"] == "extractive" and "Warsaw" in answer["answer"]
    assert answer["cited"] and "[1]" in answer["answer"]
    assert any("offers no chat" in note for note in answer["notes"]), answer["notes"]
    assert not any("--no-generate" in note for note in answer["notes"])

    found = httpx.post(f"{served.plain_url}/v1/knowledge/search",
                       json={"query": "Apple Cupertino", "top": 2}, timeout=60).json()
    assert 1 <= len(found["hits"]) <= 2 and "fulltext" in found["retrievers"]
    assert found["hits"][0]["citation"]["uri"].endswith("apple.html")
    past = httpx.post(f"{served.plain_url}/v1/knowledge/search",
                      json={"query": "Apple Cupertino", "as_of": "2000-01-01"}, timeout=60)
    assert past.status_code == 200 and past.json()["hits"] == []  # not ingested yet then


@pytest.mark.parametrize(("body", "code", "says"), [
    ({"question": "   "}, "invalid_question", "the question is empty"),
    ({"question": "Who?", "as_of": "last tuesday"}, "invalid_as_of", "is not a date"),
    ({"question": "Who?", "top": 0}, "invalid_request", "top"),
    ({"query": "Who?"}, "invalid_request", "'query' was unexpected"),
], ids=["empty", "as_of", "top", "field"])
def test_a_bad_question_is_refused_with_a_clear_400(
        served: Served, body: dict[str, Any], code: str, says: str) -> None:
    reply = httpx.post(f"{served.plain_url}/v1/knowledge/ask", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == code and says in error["message"], error


def test_the_openai_client_chats_with_the_knowledge_model_streamed_and_not(
        served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.chat_url}/v1", api_key=served.operator,
                           max_retries=0)
    listed = {m.id: m.owned_by for m in client.models.list()}
    assert listed == {"tiny": "llamacpp", KNOWLEDGE_MODEL: "sutazai"}

    question: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who is Satya Nadella?"},
        {"role": "assistant", "content": "I do not know."},
        {"role": "user", "content": "Who founded Amazon?"}]  # the last one is asked
    reply = client.chat.completions.create(model=KNOWLEDGE_MODEL, messages=question)
    text = reply.choices[0].message.content
    assert text is not None and text.startswith(ENGINE_ANSWER)
    assert "\n\nSources:\n[1] amazon.md > Notes (" in text and ", chars " in text
    assert reply.choices[0].finish_reason == "stop" and reply.model == KNOWLEDGE_MODEL
    extra = reply.model_extra or {}
    first = extra["sutazai_citations"][0]
    assert first["number"] == 1 and first["cited"] and first["uri"].endswith("amazon.md")
    assert extra["sutazai_answer"]["mode"] == "generated"

    stream = client.chat.completions.create(model=KNOWLEDGE_MODEL, messages=question,
                                            stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert (chunks[-1].model_extra or {})["sutazai_citations"][0]["cited"]

    with pytest.raises(openai.BadRequestError, match="last user message"):
        client.chat.completions.create(model=KNOWLEDGE_MODEL,
                                       messages=[{"role": "system", "content": "Hi"}])


def test_the_knowledge_base_needs_a_key_whose_role_serves(served: Served) -> None:
    ask = {"question": "Who founded Amazon?"}
    anonymous = httpx.post(f"{served.chat_url}/v1/knowledge/ask", json=ask)
    assert anonymous.status_code == 401
    for path, body in (("/v1/knowledge/ask", ask), ("/v1/knowledge/search", {"query": "x"}),
                       ("/v1/chat/completions", {"model": KNOWLEDGE_MODEL, "messages": [
                           {"role": "user", "content": "Who founded Amazon?"}]})):
        denied = httpx.post(f"{served.chat_url}{path}", json=body,
                            headers=served.auth(served.viewer))
        assert denied.status_code == 403, (path, denied.text)
        assert "'serve'" in denied.json()["error"]["message"]
    models = httpx.get(f"{served.chat_url}/v1/models", headers=served.auth(served.viewer))
    assert KNOWLEDGE_MODEL in [m["id"] for m in models.json()["data"]]  # viewers read


def test_a_gateway_without_the_knowledge_base_or_with_its_store_down_says_so(
        served: Served) -> None:
    down = served.settings.model_copy(update={"kg_uri": f"redis://127.0.0.1:{free_port()}"})
    ask = {"question": "Who founded Amazon?"}
    with GatewayThread(create_app(upstream_engine(served.engine_url)), "127.0.0.1",
                       free_port()) as without, \
            GatewayThread(create_app(upstream_engine(served.engine_url), knowledge=down),
                          "127.0.0.1", free_port()) as dead:
        off = httpx.post(f"{without.url}/v1/knowledge/ask", json=ask)
        assert off.status_code == 404 and off.json()["error"]["code"] == "knowledge_disabled"
        unavailable = httpx.post(f"{dead.url}/v1/knowledge/ask", json=ask, timeout=60)
        assert unavailable.status_code == 503, unavailable.text
        assert unavailable.json()["error"]["code"] == "knowledge_unavailable"
        assert "redis://" not in unavailable.text and int(unavailable.headers["retry-after"])


def test_several_models_lend_the_chat_champion_to_answer(served: Served) -> None:
    """The router has nothing loaded: a question loads the chat champion, as a request
    naming it would (a stand-in start), and the answer is generated by it."""
    engine = chat_engine(served.engine_url)
    manifest: Manifest = engine.manifest
    starts: list[str] = []

    def start(settings: Settings, wanted: Manifest, name: str | None) -> RunningEngine:
        starts.append(wanted.ref)
        return engine

    router = ModelRouter(served.settings, [(manifest, "llamacpp", "chat")], start_engine=start)
    app = routed_app(RouterRouting(router), knowledge=served.settings)
    with GatewayThread(app, "127.0.0.1", free_port()) as gateway:
        listed = httpx.get(f"{gateway.url}/v1/models").json()["data"]
        assert [m["id"] for m in listed] == ["tiny", KNOWLEDGE_MODEL] and starts == []
        reply = httpx.post(f"{gateway.url}/v1/knowledge/ask",
                           json={"question": "Who founded Amazon?"}, timeout=60).json()
        assert reply["mode"] == "generated" and reply["model"] == "tiny"
        assert starts == [manifest.ref]
        assert router.models[0].leases == 0  # the lease ended with the answer
