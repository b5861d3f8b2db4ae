"""Extraction quality against a gold set: precision, recall and F1 per entity type, and
relation precision (and recall).

Each gold line is a sentence with its entities ``[name, type]`` and relations
``[subject, type, object]``. Names are compared after :func:`normalise`, so "the United
Nations" and "United Nations" match; an entity counts only with the right type, and a
relation only with the right type and both ends. The benchmark prints these figures and
a test guards a floor under them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from sutazai.knowledge.extract import ChunkExtractor
from sutazai.knowledge.models import Chunk
from sutazai.knowledge.resolve import normalise


class GoldSentence(BaseModel):
    text: str
    entities: list[tuple[str, str]]
    relations: list[tuple[str, str, str]]


class Scores(BaseModel):
    true_positives: int
    predicted: int
    gold: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.gold if self.gold else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


class QualityReport(BaseModel):
    sentences: int
    entities: Scores
    entities_by_type: dict[str, Scores]
    relations: Scores
    relations_untyped: Scores  # right ends, any type: what the verb mapping costs


def load_gold(path: Path) -> list[GoldSentence]:
    lines = [line for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return [GoldSentence.model_validate(json.loads(line)) for line in lines]


def evaluate(extractor: ChunkExtractor, gold: Sequence[GoldSentence]) -> QualityReport:
    chunks = [Chunk(id=f"gold:{i}", document="gold", index=i, start=0, end=len(s.text),
                    text=s.text) for i, s in enumerate(gold)]
    found = extractor.extract(chunks)
    entity_tp: Counter[str] = Counter()
    entity_pred: Counter[str] = Counter()
    entity_gold: Counter[str] = Counter()
    rel = Counter[str]()
    for sentence, extraction in zip(gold, found, strict=True):
        predicted = {(m.type, normalise(m.text, m.type)) for m in extraction.mentions}
        expected = {(t, normalise(n, t)) for n, t in sentence.entities}
        for etype, _ in predicted:
            entity_pred[etype] += 1
        for etype, _ in expected:
            entity_gold[etype] += 1
        for etype, _ in predicted & expected:
            entity_tp[etype] += 1
        def key(name: str) -> str:
            return normalise(name, "OTHER")  # no type-specific stripping at the ends

        got = {(key(r.subject.text), r.type, key(r.object.text)) for r in extraction.relations}
        want = {(key(s), t, key(o)) for s, t, o in sentence.relations}
        rel["pred"] += len(got)
        rel["gold"] += len(want)
        rel["tp"] += len(got & want)
        untyped_got = {(s, o) for s, _, o in got}
        untyped_want = {(s, o) for s, _, o in want}
        rel["pred_u"] += len(untyped_got)
        rel["gold_u"] += len(untyped_want)
        rel["tp_u"] += len(untyped_got & untyped_want)
    by_type = {t: Scores(true_positives=entity_tp[t], predicted=entity_pred[t],
                         gold=entity_gold[t])
               for t in sorted(set(entity_pred) | set(entity_gold))}
    return QualityReport(
        sentences=len(gold),
        entities=Scores(true_positives=sum(entity_tp.values()),
                        predicted=sum(entity_pred.values()), gold=sum(entity_gold.values())),
        entities_by_type=by_type,
        relations=Scores(true_positives=rel["tp"], predicted=rel["pred"], gold=rel["gold"]),
        relations_untyped=Scores(true_positives=rel["tp_u"], predicted=rel["pred_u"],
                                 gold=rel["gold_u"]))
