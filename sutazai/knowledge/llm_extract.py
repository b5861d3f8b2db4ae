"""LLM extraction: entities and relations from a served model, constrained to a JSON schema.

The schema enumerates the entity and relation types the user declares (settings
``kg_entity_types``, ``kg_relation_types``). It is sent with every request in the forms
the OpenAI-compatible engines understand — ``response_format`` with a ``schema``
(llama.cpp's server, vLLM), ``json_schema`` (llama.cpp's native field) and, when
llama-cpp-python is installed, the equivalent GBNF ``grammar`` its server constrains
decoding with — over ``/v1/completions``, which base models (no chat template) serve too.

Whatever the engine promises, the output is validated here: JSON that does not parse or
does not fit the schema is retried (the first try is greedy, retries sample with other
seeds), then skipped and counted, never written. Names the model returns must occur in
the chunk, so an invented entity is dropped (and counted) instead of entering the graph.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
from collections.abc import Sequence
from typing import Any, Literal

import urllib3
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from sutazai.config import Settings
from sutazai.errors import ExtractionError
from sutazai.knowledge.models import Chunk, Extraction, Mention, Provenance, RelationMention

log = logging.getLogger(__name__)
DEFAULT_ENTITY_CONFIDENCE = 0.7
DEFAULT_RELATION_CONFIDENCE = 0.6
MAX_ITEMS = 12  # per chunk and list: bounds the grammar, so answers end before max_tokens
PROMPT = """Extract the named entities and the relations between them from the text.
Entity types: {entity_types}.
Relation types: {relation_types}.
Answer with JSON only. "source" and "target" are names from "entities"; "confidence" is
between 0 and 1.
{example}
Text: {text}
JSON:"""
# A worked example helps base models (no chat template, no instructions tuning) most;
# only the parts whose types the user declared are shown.
EXAMPLE_TEXT = "Ada Lovelace was born in London and worked with Charles Babbage."
EXAMPLE_ENTITIES = [("Ada Lovelace", "PERSON"), ("London", "GPE"), ("Charles Babbage", "PERSON")]
EXAMPLE_RELATIONS = [("Ada Lovelace", "BORN_IN", "London", 0.9)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def output_model(entity_types: Sequence[str], relation_types: Sequence[str]) -> type[BaseModel]:
    """The pydantic model (and so the JSON schema) an answer must match."""
    if not entity_types or not relation_types:
        raise ExtractionError("LLM extraction needs at least one entity type and one relation "
                              "type (settings kg_entity_types, kg_relation_types)")
    entity_type: Any = Literal[tuple(entity_types)]
    relation_type: Any = Literal[tuple(relation_types)]
    entity: Any = create_model("LLMEntity", __base__=_Strict, name=(str, ...),
                          type=(entity_type, ...))
    relation: Any = create_model("LLMRelation", __base__=_Strict, source=(str, ...),
                            target=(str, ...), type=(relation_type, ...),
                            confidence=(float, Field(ge=0.0, le=1.0)))
    return create_model("LLMExtraction", __base__=_Strict,
                        entities=(list[entity], Field(max_length=MAX_ITEMS)),
                        relations=(list[relation], Field(max_length=MAX_ITEMS)))


class LLMExtractor:
    """Entities and relations from an OpenAI-compatible completions endpoint."""

    name = "llm"

    def __init__(self, url: str, model: str, entity_types: Sequence[str],
                 relation_types: Sequence[str], *, retries: int = 2, max_tokens: int = 512,
                 timeout_s: float = 120.0, api_key: str | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        self.model = model
        self.entity_types = list(entity_types)
        self.relation_types = list(relation_types)
        self.retries = retries
        self.max_tokens = max_tokens
        self.output = output_model(entity_types, relation_types)
        self.schema = self.output.model_json_schema()
        self.grammar = _gbnf(self.schema)
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=timeout_s),
                                        retries=False, headers=auth_headers(api_key),
                                        ssl_context=ssl_context)

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMExtractor:
        """The configured endpoint, else the champion `sutazai serve` serves; its first model
        unless ``kg_llm_model`` names one. Fails at once if nothing answers."""
        from sutazai.security.access import client_key
        from sutazai.security.tls import client_ssl

        scheme = "http" if settings.tls == "off" else "https"
        url = settings.kg_llm_url or f"{scheme}://{settings.serve_host}:{settings.serve_port}"
        key = client_key(settings)
        verify = client_ssl(settings)
        context = verify if isinstance(verify, ssl.SSLContext) else None
        model = settings.kg_llm_model or first_model(url, settings.kg_llm_timeout_s, key,
                                                     context)
        return cls(url, model, settings.kg_entity_types, settings.kg_relation_types,
                   retries=settings.kg_llm_retries, max_tokens=settings.kg_llm_max_tokens,
                   timeout_s=settings.kg_llm_timeout_s, api_key=key, ssl_context=context)

    def extract(self, chunks: Sequence[Chunk]) -> list[Extraction]:
        return [self.extract_one(chunk) for chunk in chunks]

    def extract_one(self, chunk: Chunk) -> Extraction:
        invalid = 0
        for attempt in range(self.retries + 1):
            text = self._complete(chunk.text, attempt)
            try:
                answer = self.output.model_validate_json(_json_part(text))
            except ValidationError as exc:
                invalid += 1
                log.info("invalid LLM output for chunk %s (attempt %d): %s", chunk.id,
                         attempt + 1, exc.errors()[0].get("msg", exc))
                continue
            extraction = self._to_extraction(chunk, answer.model_dump())
            extraction.invalid = invalid
            return extraction
        log.warning("skipped chunk %s: %d invalid answers from %s", chunk.id, invalid,
                    self.model)
        return Extraction(chunk=chunk, skipped=1, invalid=invalid)

    def _example(self) -> str:
        entities = [{"name": n, "type": t} for n, t in EXAMPLE_ENTITIES
                    if t in self.entity_types]
        names = {e["name"] for e in entities}
        relations = [{"source": s, "target": o, "type": t, "confidence": c}
                     for s, t, o, c in EXAMPLE_RELATIONS
                     if t in self.relation_types and {s, o} <= names]
        if not entities:
            return ""
        answer = json.dumps({"entities": entities, "relations": relations})
        return f"\nText: {EXAMPLE_TEXT}\nJSON: {answer}\n"

    def _complete(self, text: str, attempt: int) -> str:
        prompt = PROMPT.format(entity_types=", ".join(self.entity_types),
                               relation_types=", ".join(self.relation_types),
                               example=self._example(), text=" ".join(text.split()))
        body: dict[str, Any] = {
            "model": self.model, "prompt": prompt, "max_tokens": self.max_tokens,
            "temperature": 0.0 if attempt == 0 else 0.8, "seed": attempt,
            "response_format": {"type": "json_object", "schema": self.schema},
            "json_schema": self.schema,
        }
        if self.grammar:
            body["grammar"] = self.grammar
        try:
            response = self.http.request("POST", f"{self.url}/v1/completions", json=body)
        except urllib3.exceptions.HTTPError as exc:
            raise ExtractionError(f"the LLM endpoint {self.url} did not answer ({exc}); start "
                                  "it (sutazai serve) or set SUTAZAI_KG_LLM_URL") from None
        if response.status != 200:
            raise ExtractionError(f"the LLM endpoint {self.url} answered HTTP "
                                  f"{response.status}: {response.data[:300]!r}")
        try:
            return str(response.json()["choices"][0]["text"])
        except (ValueError, KeyError, IndexError, TypeError):
            return ""  # counted as an invalid answer

    def _to_extraction(self, chunk: Chunk, answer: dict[str, Any]) -> Extraction:
        provenance = Provenance(document=chunk.document, chunk=chunk.id, extractor="llm",
                                model=self.model)
        mentions: dict[str, Mention] = {}
        dropped = 0
        for item in answer["entities"]:
            found = _locate(chunk, item["name"])
            if found is None:
                dropped += 1
                continue
            start, end = found
            mentions.setdefault(item["name"].casefold(), Mention(
                text=chunk.text[start - chunk.start:end - chunk.start], type=item["type"],
                start=start, end=end, confidence=DEFAULT_ENTITY_CONFIDENCE,
                provenance=provenance))
        relations = []
        for item in answer["relations"]:
            source = mentions.get(item["source"].casefold())
            target = mentions.get(item["target"].casefold())
            if source is None or target is None or source is target:
                dropped += 1
                continue
            relations.append(RelationMention(
                subject=source, object=target, type=item["type"],
                confidence=float(item.get("confidence", DEFAULT_RELATION_CONFIDENCE)),
                evidence=chunk.text[:500], provenance=provenance))
        return Extraction(chunk=chunk, mentions=list(mentions.values()), relations=relations,
                          dropped=dropped)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def first_model(url: str, timeout_s: float = 10.0, api_key: str | None = None,
                ssl_context: ssl.SSLContext | None = None) -> str:
    base = url.rstrip("/").removesuffix("/v1")
    try:
        with urllib3.PoolManager(ssl_context=ssl_context, retries=False) as http:
            response = http.request("GET", f"{base}/v1/models", timeout=min(timeout_s, 10.0),
                                    headers=auth_headers(api_key))
        models = response.json()["data"] if response.status == 200 else []
    except (urllib3.exceptions.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise ExtractionError(f"no OpenAI-compatible endpoint answers at {base} ({exc}); "
                              "start one (sutazai serve) or set SUTAZAI_KG_LLM_URL") from None
    if response.status in (401, 403):
        raise ExtractionError(f"{base} refused the graph extractor (HTTP {response.status}): "
                              "give it an operator key in SUTAZAI_API_KEY or the secret "
                              "serving/client-key")
    if not models:
        raise ExtractionError(f"{base}/v1/models lists no model; set SUTAZAI_KG_LLM_MODEL")
    return str(models[0]["id"])


def _json_part(text: str) -> str:
    """The JSON object in an answer (models sometimes wrap it in prose or a code fence)."""
    start, end = text.find("{"), text.rfind("}")
    return text[start:end + 1] if 0 <= start < end else text


def _locate(chunk: Chunk, name: str) -> tuple[int, int] | None:
    """Document offsets of ``name`` in the chunk (case-insensitive, whitespace-tolerant)."""
    words = name.split()
    if not words or len(name) > 200:
        return None
    pattern = r"\b" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
    found = re.search(pattern, chunk.text, re.IGNORECASE)
    if found is None:
        return None
    return chunk.start + found.start(), chunk.start + found.end()


def _gbnf(schema: dict[str, Any]) -> str | None:
    """The schema as a GBNF grammar for llama-cpp-python's server, when it is installed."""
    try:
        from llama_cpp.llama_grammar import json_schema_to_gbnf
    except ImportError:
        return None
    return str(json_schema_to_gbnf(json.dumps(schema)))
