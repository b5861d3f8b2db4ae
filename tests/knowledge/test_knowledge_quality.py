"""Extraction quality of spaCy NER + subject-verb-object on the gold set
(benchmarks/data/kg_gold.jsonl); benchmarks/kg_quality.py prints the full table. These
are floors a change must not break, set a little under what en_core_web_sm measures."""

from __future__ import annotations

from pathlib import Path

import pytest

from sutazai.config import Settings
from sutazai.knowledge.evaluate import evaluate, load_gold
from sutazai.knowledge.extract import SpacyExtractor, load_spacy

GOLD = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "kg_gold.jsonl"


@pytest.mark.slow  # loads spaCy
def test_extraction_quality_on_the_gold_set(settings: Settings) -> None:
    gold = load_gold(GOLD)
    assert len(gold) >= 25
    nlp, version = load_spacy(settings)
    report = evaluate(SpacyExtractor(nlp, version, settings.kg_entity_types), gold)
    assert report.entities.f1 >= 0.8
    for etype in ("PERSON", "ORG", "GPE"):
        assert report.entities_by_type[etype].f1 >= 0.8, etype
    assert report.relations.precision >= 0.8 and report.relations.recall >= 0.6
    assert report.relations_untyped.precision >= report.relations.precision
