"""Knowledge-graph entity quality on real technical documents: precision, recall and F1 of
PERSON and ORG together (and per type) over the hand-annotated corpus in
benchmarks/data/kg_real/ (READMEs from installed packages' METADATA, Debian HTML docs),
through the same loading, chunking and spaCy extraction as ``sutazai kg ingest``.

    .venv/bin/python benchmarks/kg_real_quality.py [--errors] [--json]

``--errors`` lists each document's false positives and false negatives.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from sutazai.config import load_settings
from sutazai.knowledge.evaluate import evaluate_documents, load_document_gold
from sutazai.knowledge.extract import SpacyExtractor, load_spacy

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.kg_quality import DATA, row, scores_table  # noqa: E402 (after the path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gold", type=Path, default=DATA / "kg_real_gold.jsonl")
    parser.add_argument("--corpus", type=Path, default=DATA / "kg_real")
    parser.add_argument("--errors", action="store_true", help="List each document's errors.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    settings = load_settings()
    nlp, version = load_spacy(settings)
    extractor = SpacyExtractor(nlp, version, settings.kg_entity_types, relations=False)
    report = evaluate_documents(extractor, load_document_gold(args.gold), args.corpus,
                                chunk_chars=settings.kg_chunk_chars)
    if args.json:
        print(json.dumps(report.model_dump(mode="json") | {"model": version}, indent=2))
        return
    table = scores_table(f"Entities in {report.documents} real documents, {version}")
    for name, scores in report.entities_by_type.items():
        table.add_row(*row(f"entities {name}", scores))
    table.add_row(*row("PERSON+ORG (typed)", report.entities))
    table.add_row(*row("PERSON+ORG (name only)", report.entities_untyped))
    Console().print(table)
    if args.errors:
        for document in report.false_positives:
            print(f"{document}\n  false positives: {report.false_positives[document]}\n"
                  f"  missed: {report.false_negatives[document]}")


if __name__ == "__main__":
    main()
