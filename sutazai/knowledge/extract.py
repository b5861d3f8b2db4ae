"""Extraction stages: spaCy NER (the fast baseline) and dependency subject-verb-object
relations. Every stage takes chunks and returns :class:`Extraction` models, so stages can
be chained, swapped (an LLM, :mod:`.llm_extract`) or tested alone.

spaCy's NER gives no probabilities, so confidences are priors: 0.85 for a name that looks
like one (capitalised), 0.6 otherwise; 0.6 for a verb relation, 0.5 for a relation read
off a noun ("X is the CEO of Y"). They order facts and let a threshold drop weak ones;
they are not calibrated probabilities.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from sutazai.config import Settings
from sutazai.errors import ExtractionError
from sutazai.knowledge.models import Chunk, Extraction, Mention, Provenance, RelationMention

NER_CONFIDENCE = 0.85
WEAK_NER_CONFIDENCE = 0.6
SVO_CONFIDENCE = 0.6
NOMINAL_CONFIDENCE = 0.5

# Verb (+ preposition) lemmas with a canonical relation name, so spaCy and an LLM asked
# for the declared relation types name the same fact the same way.
CANONICAL = {
    "found": "FOUNDED", "co-found": "FOUNDED", "cofound": "FOUNDED", "establish": "FOUNDED",
    "start": "FOUNDED", "create": "CREATED", "invent": "CREATED", "develop": "CREATED",
    "write": "CREATED", "design": "CREATED", "build": "CREATED", "compose": "CREATED",
    "acquire": "ACQUIRED", "buy": "ACQUIRED", "purchase": "ACQUIRED", "bear_in": "BORN_IN",
    "born_in": "BORN_IN", "work_for": "WORKS_FOR", "work_at": "WORKS_FOR",
    "work_in": "LOCATED_IN", "employ": "EMPLOYS", "hire": "EMPLOYS", "join": "MEMBER_OF",
    "lead": "LEADS",
    "head": "LEADS", "run": "LEADS", "chair": "LEADS", "direct": "LEADS",
    "locate_in": "LOCATED_IN", "base_in": "LOCATED_IN", "headquarter_in": "LOCATED_IN",
    "live_in": "LIVES_IN", "move_to": "MOVED_TO", "visit": "VISITED", "marry": "MARRIED",
    "ceo_of": "LEADS", "president_of": "LEADS", "head_of": "LEADS", "chairman_of": "LEADS",
    "director_of": "LEADS", "executive_of": "LEADS", "leader_of": "LEADS",
    "founder_of": "FOUNDED", "member_of": "MEMBER_OF",
    "part_of": "PART_OF", "capital_of": "CAPITAL_OF", "study_at": "STUDIED_AT",
}
_SUBJECTS = ("nsubj", "nsubjpass")
_OBJECTS = ("dobj", "attr", "oprd", "dative", "obj")


class ChunkExtractor(Protocol):
    """One extraction stage: chunks in, what was found in each out."""

    name: str
    model: str

    def extract(self, chunks: Sequence[Chunk]) -> list[Extraction]: ...


def _paragraph_breaks(doc: Any) -> Any:
    """A blank line starts a sentence: headings and list items carry no full stop, and the
    parser would otherwise read "Apple history\n\nSteve Jobs founded..." as one sentence."""
    for token in doc[1:]:
        previous = doc[token.i - 1]
        if (previous.is_space and previous.text.count("\n") >= 2) or (
                "\n\n" in previous.whitespace_):
            token.is_sent_start = True
    return doc


def _register_component() -> None:
    from spacy.language import Language

    if not Language.has_factory("sutazai_paragraphs"):
        Language.component("sutazai_paragraphs", func=_paragraph_breaks)


@functools.lru_cache(maxsize=4)
def _load(source: str) -> Any:
    import spacy

    _register_component()
    try:
        return spacy.load(source)
    except OSError as exc:
        raise ExtractionError(f"spaCy cannot load {source!r} ({exc}); install the model "
                              "package or set SUTAZAI_KG_SPACY_MODEL to a pipeline folder or "
                              "a repository NAME[:VERSION]") from None


def load_spacy(settings: Settings) -> tuple[Any, str]:
    """The pipeline named by ``kg_spacy_model`` and a model-version string for provenance.

    It may be an installed package, a folder, or a model in SutazAI's offline repository
    (``en-core-web-sm`` or ``en-core-web-sm:1``), whose name and version then identify it.
    """
    spec = settings.kg_spacy_model
    prefix = ""
    if Path(spec).expanduser().is_dir():
        source = str(Path(spec).expanduser().resolve())
    elif re.fullmatch(r"[A-Za-z_][\w.]*", spec) and importlib.util.find_spec(spec):
        source = spec
    else:
        source, prefix = _from_repository(settings, spec)
    nlp = _load(source)
    if "parser" in nlp.pipe_names and "sutazai_paragraphs" not in nlp.pipe_names:
        nlp.add_pipe("sutazai_paragraphs", before="parser")
    meta = nlp.meta
    version = f"{meta.get('lang', 'xx')}_{meta.get('name', 'pipeline')}-{meta.get('version', '?')}"
    return nlp, f"{prefix}{version}"


def _from_repository(settings: Settings, spec: str) -> tuple[str, str]:
    from sutazai.errors import NotFoundError
    from sutazai.repository import open_repository
    from sutazai.repository.manifest import parse_ref

    try:
        name, version = parse_ref(spec)
        repo = open_repository(settings)
        manifest = repo.get(name, version)
    except (NotFoundError, ValueError) as exc:
        raise ExtractionError(f"kg_spacy_model {spec!r} is not an installed spaCy package, a "
                              f"folder, or a model in the repository ({exc})") from None
    folder = repo.ensure_snapshot(manifest)
    configs = sorted(folder.rglob("config.cfg"))
    if not configs:
        raise ExtractionError(f"{manifest.ref} holds no spaCy pipeline (no config.cfg)")
    return str(configs[0].parent), f"{manifest.ref}/"


class SpacyExtractor:
    """NER and, with ``relations``, subject-verb-object relations from one spaCy pass."""

    def __init__(self, nlp: Any, model: str, entity_types: Sequence[str],
                 relations: bool = True, batch_size: int = 64, candidates: bool = True
                 ) -> None:
        """``candidates``: drop entity candidates that are URLs, paths, code and the like
        (:func:`drop_reason`), and read the text with its masked spans blanked out; off
        only to measure what that filter is worth."""
        self.nlp = nlp
        self.candidates = candidates
        self.model = model
        self.types = frozenset(entity_types)
        self.relations = relations
        self.batch_size = batch_size
        self.name = "spacy-ner+svo" if relations else "spacy-ner"
        missing = {"ner"} | ({"parser"} if relations else set())
        missing -= set(nlp.pipe_names)
        if missing:
            raise ExtractionError(f"the spaCy pipeline {model} has no {', '.join(missing)}; "
                                  "use one that does (en_core_web_sm has both)")

    def extract(self, chunks: Sequence[Chunk]) -> list[Extraction]:
        disable = [] if self.relations else [p for p in ("parser", "lemmatizer")
                                             if p in self.nlp.pipe_names]
        out = []
        texts = (masked_text(c) if self.candidates else c.text for c in chunks)
        code = _code_words(chunks) if self.candidates else {}
        for chunk, doc in zip(chunks, self.nlp.pipe(texts, batch_size=self.batch_size,
                                                    disable=disable), strict=True):
            dropped: Counter[str] = Counter()
            mentions = self._mentions(chunk, doc, code.get(chunk.document, set()), dropped)
            relations = self._relations(chunk, doc, mentions) if self.relations else []
            out.append(Extraction(chunk=chunk, mentions=list(mentions.values()),
                                  relations=relations, entities_dropped=dict(dropped)))
        return out

    def _provenance(self, chunk: Chunk, extractor: str) -> Provenance:
        return Provenance(document=chunk.document, chunk=chunk.id, extractor=extractor,
                          model=self.model)

    def _mentions(self, chunk: Chunk, doc: Any, code: set[str], dropped: Counter[str]
                  ) -> dict[int, Mention]:
        """Mentions keyed by the index of their span's first token."""
        found: dict[int, Mention] = {}
        provenance = self._provenance(chunk, "spacy-ner")
        for ent in doc.ents:
            if ent.label_ not in self.types:
                continue
            original = chunk.text[ent.start_char:ent.end_char]
            text = original.strip()
            if not text or not any(ch.isalnum() for ch in text):
                continue
            if self.candidates:
                reason = drop_reason(text, ent.label_, chunk, code,
                                     masked=original != ent.text)
                if reason:
                    dropped[reason] += 1
                    continue
            looks_like_a_name = text[0].isupper() or text[0].isdigit()
            found[ent.start] = Mention(
                text=text, type=ent.label_, start=chunk.start + ent.start_char,
                end=chunk.start + ent.end_char,
                confidence=NER_CONFIDENCE if looks_like_a_name else WEAK_NER_CONFIDENCE,
                provenance=provenance)
        return found

    def _relations(self, chunk: Chunk, doc: Any, mentions: dict[int, Mention]
                   ) -> list[RelationMention]:
        by_token: dict[int, Mention] = {}
        for ent in doc.ents:
            if ent.start in mentions:
                for i in range(ent.start, ent.end):
                    by_token[i] = mentions[ent.start]
        provenance = self._provenance(chunk, "spacy-svo")
        found = []
        for verb in doc:
            if verb.pos_ not in ("VERB", "AUX") or any(c.dep_ == "neg" for c in verb.children):
                continue
            for subject, obj, kind, confidence in _triples(verb):
                s, o = _entity(subject, by_token), _entity(obj, by_token)
                if s is None or o is None or s is o:
                    continue
                sentence = verb.sent.text.strip()
                found.append(RelationMention(subject=s, object=o, type=kind,
                                             confidence=confidence, evidence=sentence[:500],
                                             provenance=provenance))
        return found


def _entity(token: Any, by_token: dict[int, Mention]) -> Mention | None:
    """The entity a token belongs to: its own span, or an apposition/compound naming it."""
    if token.i in by_token:
        return by_token[token.i]
    for child in token.children:
        if child.dep_ in ("appos", "compound") and child.i in by_token:
            return by_token[child.i]
    return None


def _relation_name(*parts: str) -> str:
    raw = "_".join(p.lower() for p in parts if p)
    canonical = CANONICAL.get(raw)
    if canonical:
        return canonical
    return re.sub(r"[^A-Z0-9]+", "_", raw.upper()).strip("_") or "RELATED_TO"


def _subjects(verb: Any) -> list[Any]:
    subjects = [c for c in verb.children if c.dep_ in _SUBJECTS]
    if not subjects and verb.dep_ in ("conj", "xcomp", "advcl") and verb.head is not verb:
        subjects = [c for c in verb.head.children if c.dep_ in _SUBJECTS]
    return [s2 for s in subjects for s2 in (s, *s.conjuncts)]


def _triples(verb: Any) -> list[tuple[Any, Any, str, float]]:
    """(subject token, object token, relation type, confidence) governed by one verb."""
    lemma = verb.lemma_.lower()
    passive = any(c.dep_ == "nsubjpass" or c.dep_ == "auxpass" for c in verb.children)
    out: list[tuple[Any, Any, str, float]] = []
    subjects = _subjects(verb)
    agents = [p for c in verb.children if c.dep_ == "agent" for p in c.children
              if p.dep_ == "pobj"]
    has_object = any(c.dep_ in ("dobj", "obj") for c in verb.children)
    for child in verb.children:
        if child.dep_ in _OBJECTS:
            for obj in (child, *child.conjuncts):
                for subject in subjects:
                    out.append((subject, obj, _relation_name(lemma), SVO_CONFIDENCE))
                # "X is the CEO of Y": the relation is the noun's
                if child.dep_ == "attr":
                    for prep in obj.children:
                        if prep.dep_ == "prep":
                            for pobj in prep.children:
                                if pobj.dep_ == "pobj":
                                    for subject in subjects:
                                        out.append((subject, pobj, _relation_name(
                                            obj.lemma_, prep.lemma_), NOMINAL_CONFIDENCE))
        elif child.dep_ == "prep" and not has_object:
            # with a direct object, "founded Apple in California" places the founding,
            # it does not relate the founder to California
            for pobj in child.children:
                if pobj.dep_ != "pobj":
                    continue
                for obj in (pobj, *pobj.conjuncts):
                    for subject in subjects:
                        out.append((subject, obj, _relation_name(lemma, child.lemma_),
                                    SVO_CONFIDENCE))
    if passive and agents:
        # "GitHub was acquired by Microsoft": Microsoft ACQUIRED GitHub
        patients = list(subjects)
        out = [t for t in out if t[0] not in patients or t[2] != _relation_name(lemma)]
        for agent in agents:
            for obj in (agent, *agent.conjuncts):
                for patient in patients:
                    out.append((obj, patient, _relation_name(lemma), SVO_CONFIDENCE))
    return out


# ------------------------------------------------------------------ entity candidates
#: Why an entity candidate is dropped, as the ingest report counts it.
DROP_REASONS = ("url", "path", "file_name", "identifier", "version", "markup", "heading",
                "code", "term")
_NAME_TYPES = frozenset({"PERSON", "ORG", "GPE", "LOC", "NORP", "FAC", "PRODUCT",
                         "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE"})
_URL = re.compile(r"://|^www\.|\.(?:com|org|net|io|dev|edu|gov|cz|de|gg|me)\b|@", re.I)
_FILE = re.compile(r"(?:^|\s)[\w-]*\.(?:py|md|rst|txt|cfg|toml|ya?ml|json|ini|sh|po|mo|c|h|"
                   r"js|ts|rs|go|html?|xml|csv|so|whl|gz|zip|exe|dll|lock|pdf|png|svg)$"
                   r"|^\.\w", re.I)
_VERSION = re.compile(r"(?:^|\s)v?\d+(?:\.\d+)+\+?(?:\s|$)|\d[\w.]*\.\d|^v\d", re.I)
_MARKUP = re.compile(r"[\[\]{}<>|`*#=\\^~]|\]\(|!\[|\(\s*\)|^[(\-]|[(\-]$")
_IDENTIFIER = re.compile(r"_|\(\)|^[a-z]+[A-Z]\w*$|^[A-Za-z]+\d+[A-Za-z]*$"
                         r"|^\w+(?:\.[a-z_]\w+)+$|^[A-Z][a-z]+(?:[A-Z][a-z]+){2,}$")
# Words of technical prose a small NER model reads as names: protocols, formats, languages,
# licences, tools. None of them is a person or an organisation.
_TERMS = (
    "api abi cli gui url uri http https ssl tls ssh ftp dns tcp udp ip json yaml toml xml "
    "html css csv sql pdf svg utf unicode ascii python git svn hg cvs rust java javascript "
    "go c++ latex tex bibtex markdown rest restructuredtext bsd mit gpl lgpl mpl apache "
    "license licence pip pypi conda docker linux unix posix windows macos ios android uid "
    "gid ber der cer per asn ci cd doc docs readme faq todo bugs issues changelog nan "
    "regex cookie cookies")
TECHNICAL_TERMS = frozenset(_TERMS.split(" "))


def masked_text(chunk: Chunk) -> str:
    """The chunk's text with its masked spans (code, URLs, paths) blanked out, offsets kept."""
    if not chunk.masks:
        return chunk.text
    chars = list(chunk.text)
    for start, end in chunk.masks:
        for i in range(max(start - chunk.start, 0), min(end - chunk.start, len(chars))):
            if chars[i] != "\n":
                chars[i] = " "
    return "".join(chars)


def _code_words(chunks: Sequence[Chunk]) -> dict[str, set[str]]:
    """Per document, the identifiers its code and other masked spans use (lowercase)."""
    words: dict[str, set[str]] = {}
    for chunk in chunks:
        found = words.setdefault(chunk.document, set())
        for start, end in chunk.masks:
            span = chunk.text[start - chunk.start:end - chunk.start]
            found.update(w.casefold() for w in re.findall(r"[A-Za-z_][\w-]*", span))
    return words


def drop_reason(text: str, label: str, chunk: Chunk | None = None,
                code: set[str] | frozenset[str] = frozenset(), masked: bool = False
                ) -> str | None:
    """Why a candidate entity is not one (a key of :data:`DROP_REASONS`), or None to keep it.

    ``masked``: the span ran over masked text (code, a URL). ``code``: identifiers the
    document's code uses, so a lone word that is also an identifier there is one.
    """
    if label not in _NAME_TYPES:
        return None
    words = text.split()
    if masked:
        return "code"
    if _URL.search(text):
        return "url"
    if "/" in text or "\\" in text:
        return "path"
    if _FILE.search(text):
        return "file_name"
    if _MARKUP.search(text):
        return "markup"
    if _VERSION.search(text):
        return "version"
    if any(_IDENTIFIER.search(w) for w in words) or (
            len(words) == 1 and text.casefold() in code):
        return "identifier"
    letters = [c for c in text if c.isalpha()]
    if chunk is not None and any(" ".join(text.split()) == h for h in chunk.heading[-1:]):
        return "heading"
    if len(letters) > 3 and all(c.isupper() for c in letters) and (
            len(words) > 1 or len(letters) > 6):
        return "heading"  # an all-caps heading or shouted phrase, not an acronym
    if all(w.casefold().strip(".,'") in TECHNICAL_TERMS for w in words):
        return "term"
    return None
