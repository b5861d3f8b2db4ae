"""Cited answers: retrieved passages, numbered, answered by a chat model or extracted.

A chat model's answer is shown only when its citations check out: it cites at least one
passage, every number it cites is a passage it was given, and any text it puts in double
quotes occurs verbatim in a passage it cites. Otherwise — and without a chat model — the
answer is extractive: the sentences of the passages that best match the question, each
cited. When retrieval found nothing relevant the answer says so rather than guess.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sutazai.knowledge.models import Answer, SearchHit, SearchResult
from sutazai.knowledge.retrieve import STOP_WORDS

if TYPE_CHECKING:
    from sutazai.config import Settings
    from sutazai.knowledge.embed import Embedder

log = logging.getLogger(__name__)

NOTHING_FOUND = ("Nothing in the knowledge graph answers this: no passage is close enough "
                 "to the question.")
PASSAGE_CHARS = 600  # of each passage in the prompt: small models have small contexts
SENTENCES_SHOWN = 2
SYSTEM_PROMPT = (
    "Answer the question using only the numbered passages. After each statement, cite the "
    "passage it comes from by its number in square brackets, like [1]. Put words in double "
    "quotes only when you copy them exactly. If the passages do not answer the question, "
    "say that you do not know.")
_CITATION = re.compile(r"\[(\d{1,3})\]")
_QUOTE = re.compile(r"[\"“]([^\"”]{4,})[\"”]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])|\n+")
_WORD = re.compile(r"\w+", re.UNICODE)


class Generator(Protocol):
    """A chat model: messages in, the reply's text out (raises on any failure)."""

    name: str

    def chat(self, messages: list[dict[str, str]], max_tokens: int) -> str: ...


@dataclass
class HttpChatGenerator:
    """A model behind an OpenAI-compatible ``/v1/chat/completions`` (a SutazAI gateway)."""

    url: str
    name: str
    api_key: str | None = None
    timeout_s: float = 30.0
    verify: Any = True

    def chat(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        response = httpx.post(f"{self.url.rstrip('/')}/v1/chat/completions", headers=headers,
                              timeout=self.timeout_s, verify=self.verify,
                              json={"model": self.name, "messages": messages,
                                    "max_tokens": max_tokens, "temperature": 0})
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"] or "")


def answer(question: str, result: SearchResult, *, generator: Generator | None = None,
           embedder: Embedder | None = None, min_similarity: float = 0.3,
           max_tokens: int = 256) -> Answer:
    """Answer ``question`` from ``result``'s passages (see the module docstring)."""
    started = time.monotonic()
    reply = Answer(question=result.query, answer=NOTHING_FOUND, mode="none",
                   passages=result.hits, as_of=result.as_of, notes=list(result.notes))
    if not relevant(result, min_similarity):
        reply.passages = []
        return _timed(reply, started)
    if generator is not None:
        try:
            text = generator.chat(prompt(question, result.hits, embedder), max_tokens)
        except Exception as exc:  # any failure of the model leaves the extractive answer
            reply.notes.append(f"the chat model {generator.name} did not answer "
                               f"({_reason(exc)}); the answer is extracted instead")
        else:
            problem, cited = check_citations(text, result.hits)
            if problem is None:
                reply.answer, reply.mode, reply.cited = text.strip(), "generated", cited
                reply.model = generator.name
                return _timed(reply, started)
            reply.notes.append(f"the chat model's answer was not used: {problem}")
    reply.answer, reply.cited = extract_answer(question, result.hits, embedder)
    reply.mode = "extractive"
    return _timed(reply, started)


def relevant(result: SearchResult, min_similarity: float) -> bool:
    """Whether any passage is close enough: judged by embedding similarity when the vector
    retriever ran (keyword overlap alone is no evidence: "who" is in every FAQ), else by
    any hit at all."""
    if not result.hits:
        return False
    similarities = [h.similarity for h in result.hits if h.similarity is not None]
    if "vector" in result.retrievers:
        return bool(similarities) and max(similarities) >= min_similarity
    return True


def prompt(question: str, hits: Sequence[SearchHit], embedder: Embedder | None
           ) -> list[dict[str, str]]:
    """The chat messages: the passages numbered from 1 (each cut to its best sentences),
    then the question."""
    blocks = []
    for number, hit in enumerate(hits, start=1):
        where = " > ".join(x for x in (hit.citation.title, hit.citation.heading) if x)
        blocks.append(f"[{number}] ({where})\n{_excerpt(question, hit.text, embedder)}")
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "Passages:\n\n" + "\n\n".join(blocks)
             + f"\n\nQuestion: {question}"}]


def check_citations(text: str, hits: Sequence[SearchHit]) -> tuple[str | None, list[int]]:
    """(what is wrong, or None; the passage numbers cited)."""
    cited = sorted({int(n) for n in _CITATION.findall(text)})
    if not text.strip():
        return "it was empty", []
    if not cited:
        return "it cites no passage", []
    unknown = [n for n in cited if not 1 <= n <= len(hits)]
    if unknown:
        return f"it cites passage(s) {unknown} it was not given", []
    sources = [_flat(hits[n - 1].text) for n in cited]
    for quoted in _QUOTE.findall(text):
        if not any(_flat(quoted) in source for source in sources):
            return f"the quoted text {quoted!r} is in none of the passages it cites", []
    return None, cited


def extract_answer(question: str, hits: Sequence[SearchHit], embedder: Embedder | None
                   ) -> tuple[str, list[int]]:
    """The best-matching sentences of the passages (at most SENTENCES_SHOWN, in passage
    order), each followed by its citation."""
    candidates = [(number, sentence) for number, hit in enumerate(hits, start=1)
                  for sentence in sentences(hit.text) if not _is_label(sentence, hit)]
    if not candidates:
        return NOTHING_FOUND, []
    scores = [score + _answer_type_bonus(question, sentence)
              + _novelty_bonus(question, sentence)
              for score, (_, sentence) in zip(
                  _scores(question, [s for _, s in candidates], embedder), candidates,
                  strict=True)]
    # a passage's rank counts too: the fused ranking already weighed the evidence
    ranked = sorted(range(len(candidates)),
                    key=lambda i: -(scores[i] + 0.05 / candidates[i][0]))
    best = ranked[:1] + [i for i in ranked[1:SENTENCES_SHOWN]
                         if scores[i] >= 0.85 * scores[ranked[0]]]
    chosen = sorted(best)
    text = " ".join(f"{candidates[i][1]} [{candidates[i][0]}]" for i in chosen)
    return text, sorted({candidates[i][0] for i in chosen})


# What kind of answer a question wants, and what a sentence holding one looks like: a
# name (two capitalised words) for who, a number for when, how many and which version.
_WANTS_NAME = re.compile(r"^\s*(who|whom|whose|which (company|person|developer|"
                         r"organi[sz]ation|institute|foundation))\b", re.I)
_WANTS_NUMBER = re.compile(r"\b(when|what year|which year|how (many|much|long|old)|"
                           r"number|versions?|releases?)\b", re.I)
_NAME = re.compile(r"(?<!^)(?<![.!?] )\b[A-Z][\w'\u2019-]+(?: [A-Z][\w.'\u2019-]*)+")
_NUMBER = re.compile(r"\d")
TYPE_BONUS = 0.15  # about the gap between a sentence that answers and one that echoes


def _answer_type_bonus(question: str, sentence: str) -> float:
    if _WANTS_NAME.search(question):
        return TYPE_BONUS if _NAME.search(sentence) else 0.0
    if _WANTS_NUMBER.search(question):
        return TYPE_BONUS if _NUMBER.search(sentence) else 0.0
    return 0.0


def _novelty_bonus(question: str, sentence: str) -> float:
    """A sentence that only repeats the question's words ("What is libffi?") answers
    nothing: up to 0.1 for words the question does not have."""
    new = content_words(sentence) - content_words(question)
    return 0.1 * min(1.0, len(new) / 3)


def _is_label(sentence: str, hit: SearchHit) -> bool:
    """Headings, the title and questions the document asks itself are not answers."""
    flat = sentence.casefold().strip(" #:")
    labels = {hit.citation.title.casefold(), *(h.strip().casefold() for h in
                                               hit.citation.heading.split(" > "))}
    return flat in labels or sentence.endswith("?")


def sentences(text: str) -> list[str]:
    """Sentences of a passage, with single spaces. A line break inside a paragraph is a
    space (plain text wraps lines), unless the next line is a list item or table row;
    fragments under 3 words, lines of code and lines that are mostly a link go."""
    parts = (" ".join(p.split()) for p in _SENTENCE_END.split(_unwrap(text)))
    return [p for p in parts if len(p.split()) >= 3 and not _looks_like_code(p)
            and len(_URL.sub("", p).split()) >= 3]


_ITEM = re.compile(r"^\s*([-*•+]|\d+[.)])\s|\|")
_URL = re.compile(r"\(?\bhttps?://\S+|\]\(\S+?\)")


def _unwrap(text: str) -> str:
    """Paragraphs on one line each, list items and table rows on their own lines."""
    lines: list[str] = []
    for line in text.split("\n"):
        if lines and lines[-1] and line.strip() and not _ITEM.search(line) \
                and not _ITEM.search(lines[-1]) and not lines[-1].rstrip().endswith(":"):
            lines[-1] = f"{lines[-1].rstrip()} {line.strip()}"
        else:
            lines.append(line)
    return "\n".join(lines)


def _looks_like_code(line: str) -> bool:
    if line.startswith(("$ ", ">>> ", "... ", "# ", "pip ", "import ", "from ")):
        return True
    letters = sum(c.isalpha() or c.isspace() for c in line)
    return letters < 0.8 * len(line)


def content_words(text: str) -> set[str]:
    return {w for w in (x.lower() for x in _WORD.findall(text)) if w not in STOP_WORDS}


def _scores(question: str, texts: list[str], embedder: Embedder | None) -> list[float]:
    """Cosine similarity to the question (when an embedder is at hand) plus the share of
    the question's content words the text has."""
    wanted = content_words(question)
    lexical = [len(wanted & content_words(t)) / len(wanted) if wanted else 0.0 for t in texts]
    if embedder is None:
        return lexical
    [q, *vectors] = embedder.embed([question, *texts])
    return [sum(a * b for a, b in zip(q, v, strict=True)) + 0.5 * lex
            for v, lex in zip(vectors, lexical, strict=True)]


def _excerpt(question: str, text: str, embedder: Embedder | None) -> str:
    parts = sentences(text)
    if len(" ".join(parts)) <= PASSAGE_CHARS:
        return " ".join(parts) or " ".join(text.split())
    scores = _scores(question, parts, embedder)
    keep: list[int] = []
    for i in sorted(range(len(parts)), key=lambda i: -scores[i]):
        if sum(len(parts[j]) for j in keep) + len(parts[i]) > PASSAGE_CHARS and keep:
            break
        keep.append(i)
    return " … ".join(parts[i] for i in sorted(keep))


def _flat(text: str) -> str:
    return " ".join(text.split()).casefold()


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _timed(reply: Answer, started: float) -> Answer:
    reply.seconds = round(time.monotonic() - started, 4)
    return reply


def chat_generator(settings: Settings) -> tuple[Generator | None, str | None]:
    """The chat model ``kg ask`` uses: ``kg_llm_model`` at ``kg_llm_url`` when set, else the
    ``chat`` champion at the local gateway; (None, why) when there is none."""
    from sutazai.registry.task_aliases import current_aliases
    from sutazai.security.access import client_key
    from sutazai.security.tls import client_ssl

    model = settings.kg_llm_model
    if not model:
        champion = current_aliases(settings).choice("chat")
        if champion is None:
            return None, "no chat model is crowned (the chat task has no champion)"
        model = champion.model
    scheme = "http" if settings.tls == "off" else "https"
    url = settings.kg_llm_url or f"{scheme}://{settings.serve_host}:{settings.serve_port}"
    return HttpChatGenerator(url, model, client_key(settings),
                             timeout_s=min(30.0, settings.kg_llm_timeout_s),
                             verify=client_ssl(settings)), None
