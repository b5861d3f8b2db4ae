"""Knowledge-graph extraction quality on the gold set: precision, recall and F1 per entity
type, relation precision and recall (spaCy NER + subject-verb-object, as ``sutazai kg
ingest`` runs them).

    .venv/bin/python benchmarks/kg_quality.py [--gold benchmarks/data/kg_gold.jsonl] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sutazai.config import load_settings
from sutazai.knowledge.evaluate import Scores, evaluate, load_gold
from sutazai.knowledge.extract import SpacyExtractor, load_spacy

DATA = Path(__file__).resolve().parent / "data"


def row(name: str, s: Scores) -> list[str]:
    return [name, str(s.gold), str(s.predicted), str(s.true_positives), f"{s.precision:.3f}",
            f"{s.recall:.3f}", f"{s.f1:.3f}"]


def scores_table(title: str) -> Table:
    """A table of P/R/F1 rows (:func:`row`), as both extraction-quality scripts print them."""
    table = Table(title=title)
    for column in ("", "gold", "predicted", "correct", "precision", "recall", "F1"):
        table.add_column(column, justify="left" if not column else "right")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gold", type=Path, default=DATA / "kg_gold.jsonl")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    settings = load_settings()
    nlp, version = load_spacy(settings)
    gold = load_gold(args.gold)
    report = evaluate(SpacyExtractor(nlp, version, settings.kg_entity_types), gold)
    if args.json:
        print(json.dumps(report.model_dump(mode="json") | {"model": version}, indent=2))
        return
    table = scores_table(f"Extraction quality, {report.sentences} sentences, {version}")
    for name, scores in report.entities_by_type.items():
        table.add_row(*row(f"entities {name}", scores))
    table.add_row(*row("entities (micro)", report.entities), end_section=True)
    table.add_row(*row("relations (typed)", report.relations))
    table.add_row(*row("relations (ends only)", report.relations_untyped))
    Console().print(table)


if __name__ == "__main__":
    main()
