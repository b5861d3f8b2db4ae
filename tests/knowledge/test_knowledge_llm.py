"""LLM extraction: schema-constrained requests, validation, retry then skip-and-count.

The retry logic is tested against a tiny OpenAI-style endpoint on 127.0.0.1 that answers
what each test scripts (broken JSON, the wrong types, invented names); the real thing is
llama.cpp's server with the real Gemma 3 270M GGUF (a weak base model: the test asserts
only that every chunk is either schema-valid or counted as skipped).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sutazai.config import Settings
from sutazai.errors import ExtractionError
from sutazai.knowledge.llm_extract import LLMExtractor
from sutazai.knowledge.models import Chunk
from sutazai.knowledge.service import graph_stats, ingest, open_store
from sutazai.serving.process import ManagedProcess, free_port

TEXT = "Steve Jobs founded Apple in California."
CHUNK = Chunk(id="d:0", document="d", index=0, start=100, end=100 + len(TEXT), text=TEXT)
VALID = {"entities": [{"name": "Steve Jobs", "type": "PERSON"}, {"name": "apple", "type": "ORG"},
                      {"name": "Bill Gates", "type": "PERSON"}],
         "relations": [{"source": "Steve Jobs", "target": "Apple", "type": "FOUNDED",
                        "confidence": 0.9},
                       {"source": "Bill Gates", "target": "Apple", "type": "FOUNDED",
                        "confidence": 0.9}]}


class Scripted:
    """An OpenAI-compatible /v1/completions that answers from a script, then repeats the
    last answer; it records every request body."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._send({"object": "list", "data": [{"id": "scripted-1"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                text = outer.answers[min(len(outer.requests), len(outer.answers)) - 1]
                self._send({"choices": [{"text": text, "index": 0}]})

            def _send(self, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    endpoint = Scripted([])
    yield endpoint
    endpoint.close()


def extractor(url: str, retries: int = 2) -> LLMExtractor:
    return LLMExtractor(url, "scripted-1", ["PERSON", "ORG", "GPE"], ["FOUNDED", "LEADS"],
                        retries=retries, max_tokens=64, timeout_s=10)


def test_invalid_answers_are_retried_then_the_valid_one_is_used(scripted: Scripted) -> None:
    scripted.answers = ['{"entities": [{"name": "Steve', json.dumps(
        {"entities": [{"name": "Apple", "type": "COMPANY"}], "relations": []}),
        "Sure! Here it is:\n```json\n" + json.dumps(VALID) + "\n```"]
    found = extractor(scripted.url).extract_one(CHUNK)
    assert (found.invalid, found.skipped) == (2, 0)
    assert [(m.text, m.type, m.start, m.end) for m in found.mentions] == [
        ("Steve Jobs", "PERSON", 100, 110), ("Apple", "ORG", 119, 124)]
    assert [(r.subject.text, r.type, r.object.text, r.confidence) for r in found.relations] \
        == [("Steve Jobs", "FOUNDED", "Apple", 0.9)]
    assert found.dropped == 2  # Bill Gates is not in the text, nor his relation
    assert {m.provenance.extractor for m in found.mentions} == {"llm"}
    assert found.mentions[0].provenance.model == "scripted-1"
    first, retry = scripted.requests[0], scripted.requests[1]
    schema = first["response_format"]["schema"]
    assert first["response_format"]["type"] == "json_object" and first["json_schema"] == schema
    assert "FOUNDED" in json.dumps(schema) and "COMPANY" not in json.dumps(schema)
    assert "grammar" in first and "LLMEntity" in first["grammar"]  # llama-cpp-python's form
    assert TEXT in first["prompt"] and first["temperature"] == 0.0
    assert retry["temperature"] > 0 and retry["seed"] != first["seed"]


@pytest.mark.slow  # loads spaCy for the ingest
def test_output_that_stays_invalid_is_skipped_and_counted_never_written(
        scripted: Scripted, tmp_path: Path, settings: Settings) -> None:
    scripted.answers = ["not json at all"]
    found = extractor(scripted.url, retries=1).extract_one(CHUNK)
    assert (found.invalid, found.skipped, found.mentions, found.relations) == (2, 1, [], [])
    assert len(scripted.requests) == 2

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(TEXT + "\n\nTim Cook leads Apple.\n")
    llm = settings.model_copy(update={"kg_llm_url": scripted.url, "kg_llm_retries": 1,
                                      "kg_chunk_chars": 200})
    report = ingest(llm, [str(tmp_path / "docs")], relations="llm")
    assert report.documents_ingested == 1 and report.llm_chunks_skipped == 1
    assert report.llm_invalid_outputs == 2
    with open_store(llm) as store:
        extractors = {r[0] for r in store.query(
            "MATCH ()-[m:MENTIONS]->() RETURN DISTINCT m.extractor").rows}
    assert extractors == {"spacy-ner"}  # nothing from the model was written


@pytest.mark.slow
def test_valid_llm_facts_reach_the_graph(scripted: Scripted, settings: Settings,
                                         tmp_path: Path) -> None:
    scripted.answers = [json.dumps(VALID)]
    (tmp_path / "a.txt").write_text(TEXT + "\n")
    llm = settings.model_copy(update={"kg_llm_url": scripted.url + "/v1"})
    report = ingest(llm, [str(tmp_path / "a.txt")], relations="both")
    assert report.relations_dropped == 2 and report.llm_chunks_skipped == 0
    stats = graph_stats(llm)
    assert stats.relations_by_type.get("FOUNDED") == 1  # spaCy's and the LLM's: one per chunk
    with open_store(llm) as store:
        rows = store.query("MATCH (a)-[r:RELATED]->(b) RETURN a.name, r.type, b.name, "
                           "r.extractor, r.model, r.confidence").rows
    assert rows == [["Steve Jobs", "FOUNDED", "Apple", "llm", "scripted-1", 0.9]]


def test_an_endpoint_that_is_not_there_fails_before_any_work(settings: Settings,
                                                             tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(TEXT)
    gone = settings.model_copy(update={"kg_llm_url": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(ExtractionError, match=r"no OpenAI-compatible endpoint.*sutazai serve"):
        ingest(gone, [str(tmp_path / "a.txt")], relations="llm")
    with pytest.raises(ExtractionError, match="at least one entity type"):
        LLMExtractor("http://x", "m", [], ["FOUNDED"])


@pytest.mark.slow
def test_gemma_on_llama_cpp_answers_schema_valid_or_is_skipped(
        gemma_gguf: Path, tmp_path: Path) -> None:
    """The real llama.cpp server (llama-cpp-python) with Gemma 3 270M, grammar-constrained."""
    port = free_port()
    server = ManagedProcess("llama.cpp", [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gemma_gguf), "--model_alias",
        "gemma3-270m", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024",
        "--verbose", "False"], tmp_path / "llama.log", url=f"http://127.0.0.1:{port}",
        health_path="/v1/models").start()
    try:
        server.wait_ready(120)
        llm = LLMExtractor(server.url, "gemma3-270m", ["PERSON", "ORG", "GPE"],
                           ["FOUNDED", "BORN_IN", "LEADS"], retries=1, max_tokens=96,
                           timeout_s=120)
        found = llm.extract_one(CHUNK)
        assert found.skipped in (0, 1) and 0 <= found.invalid <= 2
        if found.skipped:
            assert found.invalid == 2 and not found.mentions and not found.relations
        else:
            for m in found.mentions:  # only names that occur in the chunk survive
                assert TEXT[m.start - CHUNK.start:m.end - CHUNK.start] == m.text
                assert m.type in ("PERSON", "ORG", "GPE")
            assert all(r.type in ("FOUNDED", "BORN_IN", "LEADS") for r in found.relations)
    finally:
        server.stop()
