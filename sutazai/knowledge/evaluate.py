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


class GoldDocument(BaseModel):
    """A real document (a file beside the gold file) and every PERSON and ORG it names."""

    document: str
    entities: list[tuple[str, str]]


class DocumentQuality(BaseModel):
    """Entity P/R/F1 over whole documents: each document's distinct (type, name) pairs, as
    its entities would be stored, against the hand-annotated ones."""

    documents: int
    types: list[str]
    entities: Scores  # the right name with the right type
    entities_untyped: Scores  # the right name, whichever of ``types``
    entities_by_type: dict[str, Scores]
    false_positives: dict[str, list[str]]  # per document: "TYPE name" predicted, not gold
    false_negatives: dict[str, list[str]]  # per document: "TYPE name" gold, not predicted


def load_document_gold(path: Path) -> list[GoldDocument]:
    lines = [line for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return [GoldDocument.model_validate(json.loads(line)) for line in lines]


def evaluate_documents(extractor: ChunkExtractor, gold: Sequence[GoldDocument], folder: Path,
                       *, chunk_chars: int = 2000,
                       types: Sequence[str] = ("PERSON", "ORG")) -> DocumentQuality:
    """Load, chunk and extract each document as an ingest does, and score the entities of
    ``types`` it yields against the gold set."""
    from sutazai.knowledge.documents import chunk, load

    wanted = frozenset(types)
    tp: Counter[str] = Counter()
    pred: Counter[str] = Counter()
    want: Counter[str] = Counter()
    untyped = Counter[str]()
    false_positives: dict[str, list[str]] = {}
    false_negatives: dict[str, list[str]] = {}
    for item in gold:
        doc = load(str(folder / item.document), max_bytes=2**24)
        found = extractor.extract(chunk(doc, chunk_chars))
        predicted = {(m.type, normalise(m.text, m.type)) for f in found for m in f.mentions
                     if m.type in wanted}
        predicted = {p for p in predicted if p[1]}
        expected = {(t, normalise(n, t)) for n, t in item.entities if t in wanted}
        for counter, pairs in ((pred, predicted), (want, expected), (tp, predicted & expected)):
            for etype, _ in pairs:
                counter[etype] += 1
        names_got, names_want = {n for _, n in predicted}, {n for _, n in expected}
        untyped["pred"] += len(names_got)
        untyped["gold"] += len(names_want)
        untyped["tp"] += len(names_got & names_want)
        false_positives[item.document] = sorted(f"{t} {n}" for t, n in predicted - expected)
        false_negatives[item.document] = sorted(f"{t} {n}" for t, n in expected - predicted)
    by_type = {t: Scores(true_positives=tp[t], predicted=pred[t], gold=want[t])
               for t in sorted(wanted)}
    return DocumentQuality(
        documents=len(gold), types=sorted(wanted),
        entities=Scores(true_positives=sum(tp.values()), predicted=sum(pred.values()),
                        gold=sum(want.values())),
        entities_untyped=Scores(true_positives=untyped["tp"], predicted=untyped["pred"],
                                gold=untyped["gold"]),
        entities_by_type=by_type, false_positives=false_positives,
        false_negatives=false_negatives)
