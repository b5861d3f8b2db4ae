"""Entity resolution: many spellings of one thing become one node, with a canonical id.

Mentions are normalised (Unicode, case, whitespace, punctuation, possessives, a leading
"the", honorifics before person names, legal suffixes after organisation names), then
merged: exact normalised names; within a document, a person's bare surname or first name
with the one full name it belongs to, and an organisation's acronym with its spelled-out
name; across documents and spellings, rapidfuzz similarity above ``kg_fuzzy_threshold``.
Merges never cross entity types: "Jordan" the person and "Jordan" the country stay two.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rapidfuzz import fuzz, process

from sutazai.knowledge.models import (
    Entity,
    Extraction,
    Mention,
    Relation,
    ResolvedMention,
)

HONORIFICS = frozenset({
    "mr", "mrs", "ms", "miss", "mx", "dr", "prof", "professor", "sir", "dame", "lord", "lady",
    "madam", "mister", "rev", "reverend", "hon", "fr", "sr", "jr", "president", "senator",
    "governor", "king", "queen", "prince", "princess", "judge", "justice", "general", "gen",
    "captain", "capt", "colonel", "col", "chancellor", "minister", "mayor", "pope", "saint",
})
ORG_SUFFIXES = frozenset({"inc", "incorporated", "corp", "corporation", "ltd", "limited",
                          "llc", "llp", "plc", "gmbh", "ag", "sa", "nv", "bv", "co", "company",
                          "group", "holdings"})
_POSSESSIVE = re.compile("['\u2019]s?$")
_NON_WORD = re.compile(r"[^\w\s]+")
_MIN_FUZZY_CHARS = 5  # shorter names differ by one letter too easily ("Iran"/"Iraq")


def normalise(name: str, entity_type: str) -> str:
    """The key two spellings of one entity share (empty when nothing is left)."""
    text = unicodedata.normalize("NFKC", name).casefold().strip()
    text = _POSSESSIVE.sub("", text)
    text = text.replace("&", " and ")
    text = _NON_WORD.sub(" ", text)
    tokens = text.split()
    if tokens and tokens[0] == "the" and len(tokens) > 1:
        tokens = tokens[1:]
    if entity_type == "PERSON":
        while len(tokens) > 1 and tokens[0] in HONORIFICS:
            tokens = tokens[1:]
        while len(tokens) > 1 and tokens[-1] in {"jr", "sr", "ii", "iii", "phd", "md"}:
            tokens = tokens[:-1]
    elif entity_type == "ORG":
        while len(tokens) > 1 and tokens[-1] in ORG_SUFFIXES:
            tokens = tokens[:-1]
    return " ".join(tokens)


def display_name(text: str, entity_type: str) -> str:
    """A mention as a node name: single spaces, no leading article for organisations and
    places ("the University of Paris" -> "University of Paris")."""
    name = " ".join(text.split())
    if entity_type != "WORK_OF_ART" and name[:4].lower() == "the " and len(name) > 4:
        name = name[4:]
    return name


def entity_id(entity_type: str, key: str) -> str:
    """``person:marie-curie``: readable, stable, one per (type, key)."""
    slug = key.replace(" ", "-")
    if len(slug) > 80:
        slug = slug[:64] + "-" + hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{entity_type.lower()}:{slug}"


@dataclass
class _Group:
    """Mentions of one entity in the document being resolved."""

    type: str
    key: str
    mentions: list[Mention] = field(default_factory=list)
    merged_into: _Group | None = None

    def root(self) -> _Group:
        group = self
        while group.merged_into is not None:
            group = group.merged_into
        return group


class Resolver:
    """Resolves documents one after another against what the graph already holds."""

    def __init__(self, known: Iterable[Entity] = (), threshold: float = 90.0) -> None:
        self.threshold = threshold
        self.entities: dict[str, Entity] = {}
        self._by_key: dict[tuple[str, str], str] = {}
        self._keys_of_type: dict[str, dict[str, str]] = defaultdict(dict)
        for entity in known:
            self._remember(entity)

    def _remember(self, entity: Entity) -> None:
        self.entities[entity.id] = entity
        for key in {entity.key, *entity.keys}:
            if key:
                self._by_key.setdefault((entity.type, key), entity.id)
                self._keys_of_type[entity.type].setdefault(key, entity.id)

    def _match(self, entity_type: str, key: str) -> str | None:
        exact = self._by_key.get((entity_type, key))
        if exact is not None or len(key) < _MIN_FUZZY_CHARS:
            return exact
        candidates = self._keys_of_type.get(entity_type)
        if not candidates:
            return None
        best = process.extractOne(key, candidates.keys(), scorer=fuzz.ratio,
                                  score_cutoff=self.threshold)
        return candidates[best[0]] if best else None

    def resolve(self, extractions: Sequence[Extraction]
                ) -> tuple[list[Entity], list[ResolvedMention], list[Relation]]:
        """Canonical entities touched by these chunks (one document), their mentions and
        the relations between them."""
        groups: dict[tuple[str, str], _Group] = {}
        for extraction in extractions:
            for mention in extraction.mentions:
                key = normalise(mention.text, mention.type)
                if key:
                    groups.setdefault((mention.type, key), _Group(mention.type, key)
                                      ).mentions.append(mention)
        _merge_aliases(list(groups.values()))

        touched: dict[str, Entity] = {}
        group_ids: dict[int, str] = {}
        roots = sorted({id(g.root()): g.root() for g in groups.values()}.values(),
                       key=lambda g: (-len(_all_mentions(g, groups)), g.key))
        for root in roots:
            members = [g for g in groups.values() if g.root() is root]
            mentions = [m for g in members for m in g.mentions]
            surfaces = Counter(" ".join(m.text.split()) for m in mentions)
            # The full name's most frequent spelling, not a more frequent bare surname.
            own = Counter(display_name(m.text, root.type) for m in root.mentions)
            # ties: the spelling with the fewest words beyond the key ("Marie Curie" over
            # "Dr. Marie Curie", "Apple" over "Apple Inc.")
            canonical = max(own, key=lambda s: (own[s], -len(s.split()), len(s), s))
            key = root.key
            eid = next((found for g in members if (found := self._match(g.type, g.key))),
                       None)
            previous = self.entities.get(eid) if eid else None
            if previous is None:
                eid = entity_id(root.type, key)
                previous = self.entities.get(eid)
            assert eid is not None
            name = previous.name if previous else canonical
            aliases = set(previous.aliases if previous else []) | set(surfaces)
            aliases.discard(name)
            keys = {normalise(a, root.type) for a in aliases} | {g.key for g in members}
            best = max(m.confidence for m in mentions)
            entity = Entity(
                id=eid, name=name, type=root.type,
                key=previous.key if previous else key,
                aliases=sorted(aliases), keys=sorted(keys - {""}),
                confidence=max(best, previous.confidence if previous else 0.0),
                provenance=(previous.provenance if previous and previous.provenance
                            else mentions[0].provenance),
                # known before: in the store, or written with an earlier document (or in
                # this one, where a MERGE is what makes a second upsert harmless)
                stored=previous is not None)
            self._remember(entity)
            touched[eid] = entity
            for g in members:
                group_ids[id(g)] = eid

        resolved = [ResolvedMention(entity=group_ids[id(groups[(m.type, k)])], mention=m)
                    for extraction in extractions for m in extraction.mentions
                    if (k := normalise(m.text, m.type)) and (m.type, k) in groups]
        relations = _relations(extractions, groups, group_ids)
        return list(touched.values()), _dedupe_mentions(resolved), relations


def _all_mentions(root: _Group, groups: dict[tuple[str, str], _Group]) -> list[Mention]:
    return [m for g in groups.values() if g.root() is root for m in g.mentions]


def _merge_aliases(groups: list[_Group]) -> None:
    """Within one document: surname or first name -> the single full name containing it;
    an acronym -> the single organisation whose initials it is."""
    people = [g for g in groups if g.type == "PERSON" and len(g.key.split()) > 1]
    orgs = [g for g in groups if g.type in ("ORG", "GPE", "NORP", "FAC")
            and len(g.key.split()) > 1]
    for group in groups:
        tokens = group.key.split()
        if len(tokens) != 1:
            continue
        if group.type == "PERSON":
            owners = [p for p in people if tokens[0] in (p.key.split()[0], p.key.split()[-1])]
        else:
            owners = [o for o in orgs if o.type == group.type and len(tokens[0]) >= 2
                      and _initials(o.key) == tokens[0]]
        if len({o.root().key for o in owners}) == 1:
            group.merged_into = owners[0].root()


def _initials(key: str) -> str:
    stop = {"of", "and", "the", "for", "de", "du", "des", "la", "le"}
    return "".join(t[0] for t in key.split() if t not in stop)


def _relations(extractions: Sequence[Extraction], groups: dict[tuple[str, str], _Group],
               group_ids: dict[int, str]) -> list[Relation]:
    best: dict[tuple[str, str, str, str], Relation] = {}
    for extraction in extractions:
        for r in extraction.relations:
            ends = []
            for m in (r.subject, r.object):
                group = groups.get((m.type, normalise(m.text, m.type)))
                ends.append(group_ids.get(id(group)) if group else None)
            source, target = ends
            if source is None or target is None or source == target:
                continue
            relation = Relation(source=source, target=target, type=r.type,
                                confidence=r.confidence, evidence=r.evidence,
                                provenance=r.provenance)
            key = (source, target, r.type, r.provenance.chunk)
            if key not in best or best[key].confidence < relation.confidence:
                best[key] = relation
    return list(best.values())


def _dedupe_mentions(resolved: list[ResolvedMention]) -> list[ResolvedMention]:
    """One mention per (chunk, start): overlapping chunks and two extractors may repeat one."""
    seen: dict[tuple[str, int], ResolvedMention] = {}
    for r in resolved:
        key = (r.mention.provenance.chunk, r.mention.start)
        if key not in seen or seen[key].mention.confidence < r.mention.confidence:
            seen[key] = r
    return list(seen.values())
