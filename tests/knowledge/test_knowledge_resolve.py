"""Entity resolution: normalisation, alias merging within and across documents, fuzzy
matching, canonical ids, and never a merge across types."""

from __future__ import annotations

import pytest

from sutazai.knowledge.models import Chunk, Extraction, Mention, Provenance, RelationMention
from sutazai.knowledge.resolve import Resolver, entity_id, normalise


@pytest.mark.parametrize(("name", "etype", "key"), [
    ("Dr. Angela  Merkel", "PERSON", "angela merkel"),
    ("Mrs Marie Curie", "PERSON", "marie curie"),
    ("MARIE CURIE", "PERSON", "marie curie"),
    ("Curie's", "PERSON", "curie"),
    ("Apple Inc.", "ORG", "apple"),
    ("Microsoft Corporation", "ORG", "microsoft"),
    ("The United Nations", "ORG", "united nations"),
    ("AT&T", "ORG", "at and t"),
    ("Coca-Cola", "ORG", "coca cola"),
    ("Dr.", "PERSON", "dr"),  # never reduced to nothing
    ("Inc.", "ORG", "inc"),
])
def test_normalise(name: str, etype: str, key: str) -> None:
    assert normalise(name, etype) == key


def test_canonical_ids_are_readable_and_bounded() -> None:
    assert entity_id("PERSON", "marie curie") == "person:marie-curie"
    long = entity_id("ORG", "x " * 100)
    assert len(long) < 100 and long.startswith("org:x-x-")
    assert entity_id("ORG", "x " * 100) == long


def _chunk(doc: str = "d1", index: int = 0, text: str = "") -> Chunk:
    return Chunk(id=f"{doc}:{index}", document=doc, index=index, start=0, end=len(text),
                 text=text)


def _mention(text: str, etype: str, start: int = 0, doc: str = "d1", chunk: int = 0,
             confidence: float = 0.85) -> Mention:
    return Mention(text=text, type=etype, start=start, end=start + len(text),
                   confidence=confidence,
                   provenance=Provenance(document=doc, chunk=f"{doc}:{chunk}",
                                         extractor="test", model="test-1"))


def test_aliases_merge_within_a_document() -> None:
    mentions = [_mention("Marie Curie", "PERSON", 0), _mention("Curie", "PERSON", 40),
                _mention("Curie", "PERSON", 80), _mention("Dr. Marie Curie", "PERSON", 120),
                _mention("United Nations", "ORG", 160), _mention("UN", "ORG", 200),
                _mention("Paris", "GPE", 220), _mention("Paris", "PERSON", 240, confidence=0.6)]
    entities, resolved, _ = Resolver().resolve([Extraction(chunk=_chunk(), mentions=mentions)])
    by_id = {e.id: e for e in entities}
    assert set(by_id) == {"person:marie-curie", "org:united-nations", "gpe:paris",
                          "person:paris"}  # Paris the city and Paris the person stay two
    curie = by_id["person:marie-curie"]
    assert curie.name == "Marie Curie" and curie.aliases == ["Curie", "Dr. Marie Curie"]
    assert by_id["org:united-nations"].aliases == ["UN"]
    assert len(resolved) == len(mentions)
    assert {r.entity for r in resolved if r.mention.text == "Curie"} == {"person:marie-curie"}


def test_an_ambiguous_surname_is_not_merged() -> None:
    mentions = [_mention("Pierre Curie", "PERSON", 0), _mention("Marie Curie", "PERSON", 20),
                _mention("Curie", "PERSON", 40)]
    entities, _, _ = Resolver().resolve([Extraction(chunk=_chunk(), mentions=mentions)])
    assert {e.id for e in entities} == {"person:pierre-curie", "person:marie-curie",
                                        "person:curie"}


def test_across_documents_exact_and_fuzzy_names_share_one_entity() -> None:
    resolver = Resolver(threshold=90)
    resolver.resolve([Extraction(chunk=_chunk("d1"), mentions=[
        _mention("Barack Obama", "PERSON", doc="d1"), _mention("Iran", "GPE", 20, doc="d1")])])
    second, resolved, _ = resolver.resolve([Extraction(chunk=_chunk("d2"), mentions=[
        _mention("Barak Obama", "PERSON", doc="d2"),  # a typo: ratio 96
        _mention("President Barack Obama", "PERSON", 30, doc="d2"),
        _mention("Iraq", "GPE", 60, doc="d2"),  # short names must match exactly
        _mention("Obama Foundation", "ORG", 80, doc="d2")])])
    ids = {r.mention.text: r.entity for r in resolved}
    assert ids["Barak Obama"] == ids["President Barack Obama"] == "person:barack-obama"
    assert ids["Iraq"] == "gpe:iraq" and ids["Obama Foundation"] == "org:obama-foundation"
    obama = next(e for e in second if e.id == "person:barack-obama")
    assert obama.stored is True  # written with d1: MERGE, not CREATE
    assert next(e for e in second if e.id == "gpe:iraq").stored is False  # new: CREATE
    assert obama.name == "Barack Obama"  # the first-seen name stays canonical
    assert set(obama.aliases) >= {"Barak Obama", "President Barack Obama"}
    assert obama.provenance is not None and obama.provenance.document == "d1"


def test_relations_point_at_canonical_entities() -> None:
    text = "Microsoft acquired GitHub. Microsoft Corp. owns GitHub."
    chunk = _chunk(text=text)
    ms, gh = _mention("Microsoft", "ORG", 0), _mention("GitHub", "ORG", 19)
    ms2, gh2 = _mention("Microsoft Corp.", "ORG", 27), _mention("GitHub", "ORG", 48)
    prov = ms.provenance.model_copy(update={"extractor": "spacy-svo"})
    relations = [
        RelationMention(subject=ms, object=gh, type="ACQUIRED", confidence=0.6,
                        provenance=prov),
        RelationMention(subject=ms2, object=gh2, type="ACQUIRED", confidence=0.7,
                        provenance=prov),
        RelationMention(subject=ms, object=ms2, type="SAME", confidence=0.9, provenance=prov),
    ]
    _, _, resolved = Resolver().resolve([Extraction(chunk=chunk, mentions=[ms, gh, ms2, gh2],
                                                    relations=relations)])
    assert [(r.source, r.type, r.target, r.confidence) for r in resolved] == [
        ("org:microsoft", "ACQUIRED", "org:github", 0.7)]  # deduplicated, no self-loop
