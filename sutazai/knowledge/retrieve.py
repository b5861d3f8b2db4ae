"""Hybrid retrieval: vector, full-text and graph expansion, fused by reciprocal rank.

Each retriever ranks chunks its own way — the embedding's cosine similarity (the store's
vector index), the store's full-text index over the chunk text, and the graph (entities the
query names, the chunks that mention them, then the chunks that mention their related
entities) — and reciprocal rank fusion (Cormack et al., 2009: ``sum 1 / (60 + rank)``)
merges the rankings without calibrating their scores against each other. Every hit carries
its citation. Everything is read as of a moment: only the document versions valid then.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sutazai.errors import ConfigError, GraphStoreError
from sutazai.knowledge.models import SearchHit, SearchResult
from sutazai.knowledge.resolve import normalise
from sutazai.knowledge.stores.base import now_ms

if TYPE_CHECKING:
    from sutazai.config import Settings
    from sutazai.knowledge.embed import Embedder
    from sutazai.knowledge.stores.base import GraphStore

log = logging.getLogger(__name__)

RETRIEVERS = ("vector", "fulltext", "graph")
RRF_K = 60  # the constant of the original paper; rankings this long barely depend on it
MAX_NGRAM = 4  # longest entity name looked up, in words
_WORDS = re.compile(r"[\w.&'-]+", re.UNICODE)
MAX_QUERY_CHARS = 2000
FULLTEXT_CANDIDATES = 200  # chunks the store's full-text index hands BM25 to rank
BM25_K1, BM25_B = 1.2, 0.75  # Robertson's usual parameters (as Lucene and Elasticsearch)
_TOKEN = re.compile(r"\w+", re.UNICODE)
STOP_WORDS = frozenset({
    "a", "about", "an", "and", "are", "as", "at", "be", "by", "can", "could", "did", "do",
    "does", "for", "from", "has", "have", "how", "i", "if", "in", "into", "is", "it", "its",
    "me", "my", "of", "on", "or", "our", "should", "so", "than", "that", "the", "their",
    "them", "then", "there", "these", "they", "this", "to", "was", "we", "were", "what",
    "when", "where", "which", "who", "whom", "whose", "why", "will", "with", "would", "you",
    "your",
})


class Retriever:
    """Searches one store; ``embedder`` None leaves the vector retriever out (with a note)."""

    def __init__(self, store: GraphStore, embedder: Embedder | None,
                 notes: Sequence[str] = ()) -> None:
        self.store = store
        self.embedder = embedder
        self.notes = list(notes)

    def search(self, query: str, top: int = 5, *, as_of: int | None = None,
               use: Sequence[str] = RETRIEVERS) -> SearchResult:
        """The ``top`` chunks for ``query`` valid at ``as_of`` (epoch ms; default now)."""
        started = time.monotonic()
        query = check_query(query)
        unknown = set(use) - set(RETRIEVERS)
        if unknown or not use:
            raise ConfigError(f"retrievers must be among {', '.join(RETRIEVERS)}, not "
                              f"{', '.join(sorted(unknown)) or 'none'}")
        at = now_ms() if as_of is None else as_of
        depth = max(20, 4 * top)  # candidates per retriever
        result = SearchResult(query=query, as_of=at, notes=list(self.notes))
        rankings: dict[str, list[str]] = {}
        similarity: dict[str, float] = {}
        if "vector" in use:
            if self.embedder is None:
                result.notes.append("vector search is off: no chunk is embedded (run "
                                    "'sutazai kg embed')")
            else:
                [vector] = self.embedder.embed([query])
                try:
                    found = self.store.vector_search(vector, depth, at)
                except GraphStoreError as exc:
                    found = []
                    result.notes.append(f"vector search failed: {exc}")
                similarity = dict(found)
                rankings["vector"] = [cid for cid, _ in found]
        if "fulltext" in use:
            rankings["fulltext"] = [cid for cid, _ in
                                    bm25_search(self.store, query, depth, at)]
        if "graph" in use:
            entities = self.store.entities_with_keys(query_keys(query))
            result.entities = sorted({name for _, name in entities})
            ids = [eid for eid, _ in entities]
            direct = [cid for cid, _ in self.store.chunks_mentioning(ids, depth, at)]
            related = [cid for cid, _ in self.store.chunks_mentioning(ids, depth, at,
                                                                      neighbours=True)]
            rankings["graph"] = list(dict.fromkeys(direct + related))[:depth]
        result.retrievers = list(rankings)
        fused = reciprocal_rank_fusion(rankings)[:top]
        cited = self.store.citations([cid for cid, _ in fused])
        for cid, score in fused:
            if cid not in cited:
                continue  # removed since it was ranked
            text, citation = cited[cid]
            result.hits.append(SearchHit(
                rank=len(result.hits) + 1, score=round(score, 6), text=text,
                citation=citation, similarity=similarity.get(cid),
                ranks={name: (ranking.index(cid) + 1 if cid in ranking else None)
                       for name, ranking in rankings.items()}))
        result.seconds = round(time.monotonic() - started, 4)
        return result


def check_query(query: str) -> str:
    text = " ".join(query.split())
    if not text:
        raise ConfigError("the question is empty; ask something, e.g. "
                          "sutazai kg ask \"Who maintains urllib3?\"")
    if len(text) > MAX_QUERY_CHARS:
        raise ConfigError(f"the question is {len(text)} characters long; keep it under "
                          f"{MAX_QUERY_CHARS}")
    return text


def bm25_search(store: GraphStore, query: str, k: int, as_of: int
                ) -> list[tuple[str, float]]:
    """(chunk id, BM25 score) of the ``k`` best chunks for the query's words.

    The store's full-text index finds the chunks holding any of the words and counts the
    chunks holding each (document frequency); the scoring is Okapi BM25 here, since the
    stores' own scorers differ (FalkorDB's RediSearch TF-IDF favours a short chunk that
    says "company" once over one that answers the question). Words match by their Snowball
    stem, as the index matches them.
    """
    words = query_words(query)
    candidates = store.fulltext_candidates(words, FULLTEXT_CANDIDATES, as_of)
    if not candidates:
        return []
    chunks, mean_length = store.chunk_text_stats(as_of)
    frequencies = store.document_frequencies(words, as_of)
    stems = {w: stem(w) for w in words}
    # a word's stem is its prefix but for a last letter (company -> compani): only tokens
    # starting so can match, and only those are stemmed (stemming is most of the cost)
    prefixes = tuple({s[:-1] or s for s in stems.values()})
    idf = {w: math.log(1 + (chunks - df + 0.5) / (df + 0.5)) for w, df in frequencies.items()}
    scored = []
    for cid, text in candidates:
        counts = Counter(stem(token) for token in _TOKEN.findall(text.casefold())
                         if token.startswith(prefixes))
        norm = BM25_K1 * (1 - BM25_B + BM25_B * len(text) / max(mean_length, 1.0))
        score = sum(idf[w] * counts[stems[w]] * (BM25_K1 + 1) / (counts[stems[w]] + norm)
                    for w in words if counts[stems[w]])
        scored.append((cid, score))
    scored.sort(key=lambda item: -item[1])
    return scored[:k]


def query_words(query: str) -> list[str]:
    """The query's distinct words, lower-cased, without stop words and single letters."""
    words = (w.casefold() for w in _TOKEN.findall(query))
    return list(dict.fromkeys(w for w in words if len(w) > 1 and w not in STOP_WORDS))


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """The word's Snowball (Porter 2) English stem, as full-text indexes stem it."""
    return str(_stemmer().stemWord(word))


@functools.cache
def _stemmer() -> Any:
    import snowballstemmer

    return snowballstemmer.stemmer("english")


def reciprocal_rank_fusion(rankings: dict[str, list[str]], k: int = RRF_K
                           ) -> list[tuple[str, float]]:
    """Items by ``sum(1 / (k + rank))`` over the rankings that hold them, best first (ties:
    the order of first appearance, so the result is deterministic)."""
    scores: dict[str, float] = {}
    for ranking in rankings.values():
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def query_keys(query: str) -> list[str]:
    """The normalised keys of every run of up to MAX_NGRAM words in the query, as the
    resolver normalises entity names of each type: what the graph's ``key`` index holds."""
    words = [w.strip(".'-") for w in _WORDS.findall(query)]
    words = [w for w in words if w]
    keys: set[str] = set()
    for size in range(1, MAX_NGRAM + 1):
        for i in range(len(words) - size + 1):
            gram = " ".join(words[i:i + size])
            if size == 1 and len(gram) < 3:
                continue
            keys.update(normalise(gram, kind) for kind in ("PERSON", "ORG", "OTHER"))
    keys.discard("")
    return sorted(keys)


def open_retriever(settings: Settings, store: GraphStore) -> Retriever:
    """A retriever whose query embeddings match the stored chunks': the embeddings
    champion when the chunks are embedded with it, else the model they are embedded with
    (and a note to re-embed), else none (vector search off)."""
    from sutazai.errors import NotFoundError
    from sutazai.knowledge.embed import Embedder, embedding_model_ref
    from sutazai.repository import open_repository

    stored = store.embedding_models()
    if not stored:
        return Retriever(store, None)
    champion = embedding_model_ref(settings)
    wanted = f"{champion[0]}:{champion[1]}" if champion else ""
    name = wanted if wanted in stored else max(stored, key=lambda m: stored[m][1])
    notes = []
    if wanted and name != wanted:
        notes.append(f"chunks are embedded with {name}, not the embeddings champion "
                     f"{wanted}; 'sutazai kg embed' re-embeds them")
    model, _, version = name.rpartition(":")
    repository = open_repository(settings)
    try:
        manifest = repository.get(model, int(version))
    except (NotFoundError, ValueError):
        return Retriever(store, None, [f"vector search is off: the chunks' embedding model "
                                       f"{name} is not in the repository; 'sutazai kg embed' "
                                       "re-embeds them"])
    folder = repository.ensure_snapshot(manifest, verify=False)
    return Retriever(store, Embedder.load(name, folder), notes)
