"""The OpenAPI 3.1 document of what SutazAI's serving gateway answers.

Clients, API gateways and the fuzz tests need one statement of the contract, and the
gateway's routes alone do not say it: ``/v1/{path}`` forwards to whichever engine serves
(llama.cpp or vLLM), so the request bodies documented here are the part of the OpenAI API
that *both* engines accept, with the bounds the stricter of the two enforces (vLLM
refuses ``top_p`` 0 and a negative temperature; llama.cpp serves one prompt per request).
Fields an engine adds of its own (``top_k``, ``min_p``, ``grammar``...) still pass
through, so request objects allow additional properties; responses document what the
gateway itself adds (the interaction-id header, OpenAI-style errors).

``max_tokens`` is documented as a positive integer without ``null``: both engines read
``null`` (and llama.cpp also ``0``) as "until the context is full", which turns one
request into seconds of generation; the contract leaves that out on purpose.

``/v1/knowledge/ask`` and ``/v1/knowledge/search`` are the gateway's own (the knowledge
graph, :class:`~sutazai.serving.gateway.KnowledgeApi`); their answers are documented from
the core's pydantic models, so the document cannot drift from what they return.

``auth`` adds the API-key security scheme of :mod:`sutazai.security.access`: every route but the
health probes (``/health``, ``/health/live``, ``/health/ready``) then needs
``Authorization: Bearer <key>`` or ``X-API-Key``, and documents 401
(no or bad key), 403 (role lacks the permission) and 429 (rate limit, with Retry-After).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

OPENAPI_VERSION = "3.1.0"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ERROR_REF = {"$ref": "#/components/schemas/Error"}
JSON = "application/json"
REQUEST_SCHEMAS = {"completions": "CompletionRequest", "chat/completions": "ChatCompletionRequest",
                   "embeddings": "EmbeddingRequest", "feedback": "FeedbackRequest",
                   "knowledge/ask": "KnowledgeAskRequest",
                   "knowledge/search": "KnowledgeSearchRequest"}

_STRINGS = {"type": "array", "items": {"type": "string"}}
_NULLABLE_STRING = {"type": ["string", "null"]}

_SAMPLING: dict[str, Any] = {
    "model": {"type": "string", "description": "The served model's name (or name:version); "
              "another name is refused with 404 model_not_found. Optional. At "
              "/v1/chat/completions, 'knowledge' answers the last user message from the "
              "knowledge graph, with its sources (see /v1/knowledge/ask)."},
    "max_tokens": {"type": "integer", "minimum": 1, "default": 16,
                   "description": "Most tokens to generate; prompt plus output must fit the "
                   "engine's context (else 400)."},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2,
                    "description": "0 is greedy (deterministic)."},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "stream": {"type": "boolean", "default": False,
               "description": "Answer as server-sent events (text/event-stream), ending with "
               "'data: [DONE]'."},
    "stop": {"description": "Text at which generation stops.",
             "anyOf": [{"type": "string"}, {**_STRINGS, "maxItems": 4}, {"type": "null"}]},
    "seed": {"type": ["integer", "null"], "minimum": INT64_MIN, "maximum": INT64_MAX},
    "presence_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "user": _NULLABLE_STRING,
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "OpenAI-style error, from the gateway or passed through from the engine.",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string",
                         "examples": ["invalid_request_error", "authentication_error",
                                      "permission_error", "rate_limit_error", "server_error"]},
                "param": _NULLABLE_STRING,
                "code": {"type": ["string", "integer", "null"],
                         "examples": ["model_not_found", "chat_not_supported",
                                      "invalid_json", "engine_unavailable"]},
            },
        }},
    },
    "CompletionRequest": {
        "type": "object",
        "additionalProperties": True,
        "properties": {
            **_SAMPLING,
            "prompt": {"description": "One prompt per request (llama.cpp serves no batches): "
                       "a string, or a list holding one string.",
                       "anyOf": [{"type": "string"},
                                 {**_STRINGS, "minItems": 1, "maxItems": 1}]},
            "suffix": _NULLABLE_STRING,
            "echo": {"type": "boolean", "default": False},
            "logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 5,
                         "description": "Log-probabilities of the most likely tokens."},
        },
        "required": ["prompt"],
    },
    "ChatMessage": {
        "type": "object",
        "additionalProperties": True,
        "required": ["role", "content"],
        "properties": {
            "role": {"enum": ["system", "user", "assistant"]},
            "content": {"type": "string"},
            "name": {"type": "string"},
        },
    },
    "ChatCompletionRequest": {
        "type": "object",
        "additionalProperties": True,
        "required": ["messages"],
        "properties": {
            **_SAMPLING,
            "messages": {"type": "array", "minItems": 1,
                         "items": {"$ref": "#/components/schemas/ChatMessage"}},
            "logprobs": {"type": ["boolean", "null"]},
            "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
        },
    },
    "EmbeddingRequest": {
        "type": "object",
        "additionalProperties": True,
        "required": ["input"],
        "properties": {
            "model": _SAMPLING["model"],
            "input": {"anyOf": [{"type": "string"},
                                {**_STRINGS, "minItems": 1}]},
            "user": _NULLABLE_STRING,
        },
    },
    "Usage": {
        "type": "object",
        "required": ["prompt_tokens", "total_tokens"],
        "properties": {"prompt_tokens": {"type": "integer", "minimum": 0},
                       "completion_tokens": {"type": ["integer", "null"], "minimum": 0},
                       "total_tokens": {"type": "integer", "minimum": 0}},
    },
    "Completion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "text_completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {
                "type": "object",
                "required": ["text", "index"],
                "properties": {"text": {"type": "string"},
                               "index": {"type": "integer", "minimum": 0},
                               "logprobs": {"type": ["object", "null"]},
                               "finish_reason": {"enum": ["stop", "length", None]}},
            }},
            "usage": {"$ref": "#/components/schemas/Usage"},
        },
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {
                "type": "object",
                "required": ["index", "message"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "message": {"type": "object", "required": ["role"],
                                "properties": {"role": {"type": "string"},
                                               "content": _NULLABLE_STRING}},
                    "finish_reason": {"type": ["string", "null"]},
                },
            }},
            "usage": {"$ref": "#/components/schemas/Usage"},
            "sutazai_citations": {
                "type": "array", "description": "Model 'knowledge' only: the passages of the "
                "answer, numbered from 1 as its [n] markers, each with 'cited' and its "
                "citation (document, uri, title, heading, page, start, end, snippet).",
                "items": {"type": "object", "required": ["number", "cited", "uri"]}},
            "sutazai_answer": {
                "type": "object", "description": "Model 'knowledge' only: how it was answered "
                "(mode generated, extractive or none; the chat model; notes; as_of)."},
        },
    },
    "EmbeddingList": {
        "type": "object",
        "required": ["object", "data", "model"],
        "properties": {
            "object": {"const": "list"},
            "model": {"type": "string"},
            "data": {"type": "array", "items": {
                "type": "object",
                "required": ["object", "embedding", "index"],
                "properties": {"object": {"const": "embedding"},
                               "embedding": {"type": "array", "items": {"type": "number"}},
                               "index": {"type": "integer", "minimum": 0}},
            }},
            "usage": {"$ref": "#/components/schemas/Usage"},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {
                "type": "object",
                "required": ["id", "object"],
                "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                               "owned_by": {"type": "string"},
                               "created": {"type": "integer"}},
            }},
        },
    },
    "FeedbackRequest": {
        "type": "object",
        "required": ["id", "rating"],
        "properties": {
            "id": {"type": "integer", "minimum": 1, "maximum": INT64_MAX,
                   "description": "The x-sutazai-interaction-id header of the answer rated."},
            "rating": {"type": "number", "minimum": -1, "maximum": 1,
                       "description": "-1 bad, 0 neutral, 1 good."},
            "label": {"type": ["string", "null"], "minLength": 1, "maxLength": 64,
                      "pattern": r"\S"},
        },
    },
    "Feedback": {
        "type": "object",
        "required": ["id", "rating", "label"],
        "properties": {"id": {"type": "integer"}, "rating": {"type": "number"},
                       "label": _NULLABLE_STRING},
    },
    "Health": {
        "type": "object",
        "required": ["status", "engine", "model", "version", "in_flight", "restarts", "reason"],
        "properties": {
            "status": {"enum": ["ok", "busy", "degraded", "restarting", "failed"],
                       "description": "ok: the engine answers; busy: it has requests in "
                       "flight (too busy to answer a probe is not a failure); degraded: it "
                       "does not answer; restarting: it died and is being restarted; failed: "
                       "its restarts are exhausted"},
            "engine": {"type": "string"}, "model": {"type": "string"},
            "version": {"type": "string", "description": "name:version served"},
            "in_flight": {"type": "integer", "minimum": 0},
            "restarts": {"type": "integer", "minimum": 0,
                         "description": "Times the gateway restarted a dead engine"},
            "reason": {**_NULLABLE_STRING, "description": "Why it is not ok, else null"}},
    },
}

_TOP = {"type": "integer", "minimum": 1, "maximum": 50,
        "description": "Passages to retrieve (default: the settings' kg_ask_passages for an "
        "answer, 5 for a search)."}
_AS_OF = {"type": ["string", "null"], "examples": ["2025-01-15", "2025-01-15T12:00:00Z"],
          "description": "The graph as it was then: an ISO-8601 date or time, UTC unless it "
          "says (default: now)."}
_SCHEMAS["KnowledgeAskRequest"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["question"],
    "properties": {"question": {"type": "string", "description": "What to ask the documents "
                                "(at most 2000 characters)."},
                   "top": _TOP, "as_of": _AS_OF},
}
_SCHEMAS["KnowledgeSearchRequest"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["query"],
    "properties": {"query": {"type": "string"}, "top": _TOP, "as_of": _AS_OF},
}


def _knowledge_schemas() -> dict[str, Any]:
    """Answer and SearchResult (and the models they hold) from the core's pydantic models."""
    from sutazai.knowledge.models import Answer, SearchResult

    found: dict[str, Any] = {}
    for model in (Answer, SearchResult):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}",
                                         mode="serialization")
        found.update(schema.pop("$defs", {}))
        found[model.__name__] = schema
    return found


_SCHEMAS.update(_knowledge_schemas())


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": ERROR_REF}}}


def _json(description: str, schema: str, headers: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description,
                              "content": {JSON: {"schema": {"$ref": f"#/components/schemas/"
                                                                    f"{schema}"}}}}
    if headers:
        answer["headers"] = headers
    return answer


_INTERACTION = {"x-sutazai-interaction-id": {
    "description": "With request logging on: the id to rate with POST /v1/feedback.",
    "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
# In OpenAPI 3.1 the schema of an event stream describes one event.
_STREAM = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string", "description": "One JSON chunk of the answer "
                            "(choices[].text or choices[].delta), or [DONE] last."},
                   "event": {"type": "string"}, "id": {"type": "string"}},
}}}
_ENGINE_DOWN = _error("The engine did not answer (code engine_unavailable).")
_ENGINE_RESTARTING = {
    **_error("The engine died: with this request in flight (code engine_failed), or it is "
             "being restarted and did not come back within engine_wait_s (code "
             "engine_restarting), or its restarts are exhausted (code engine_failed); a "
             "stream already started ends with an error event of code engine_failed instead."),
    "headers": {"Retry-After": {"description": "Seconds until the engine is expected back",
                                "schema": {"type": "integer", "minimum": 1}}},
}
HEALTH_PATHS = ("/health", "/health/live", "/health/ready")


def _generation(summary: str, request: str, reply: str, stream: bool) -> dict[str, Any]:
    ok = _json(f"The {reply}", reply, _INTERACTION)
    if stream:
        ok["content"].update(_STREAM)
    return {"post": {
        "summary": summary,
        "operationId": f"create{reply}",
        "requestBody": {"required": True, "content": {
            JSON: {"schema": {"$ref": f"#/components/schemas/{request}"}}}},
        "responses": {
            "200": ok,
            "400": _error("Not valid JSON, a request the engine refuses, a prompt over the "
                          "context, or an endpoint this model does not offer (codes "
                          "invalid_json, chat_not_supported, embeddings_not_supported, "
                          "completions_not_supported)."),
            "404": _error("The request names another model (code model_not_found)."),
            "502": _ENGINE_DOWN,
            "503": _ENGINE_RESTARTING,
        },
    }}


def _knowledge(summary: str, operation: str, request: str, reply: str, invalid: str
               ) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "operationId": operation,
        "requestBody": {"required": True, "content": {
            JSON: {"schema": {"$ref": f"#/components/schemas/{request}"}}}},
        "responses": {
            "200": _json(f"The {reply}", reply),
            "400": _error(f"Not valid JSON, not the documented body, an empty or too long "
                          f"text, or an as_of that is no date (codes invalid_json, "
                          f"invalid_request, {invalid}, invalid_as_of)."),
            "404": _error("This gateway does not serve the knowledge base (code "
                          "knowledge_disabled)."),
            "503": {**_error("The knowledge graph store is not available (code "
                             "knowledge_unavailable)."),
                    "headers": {"Retry-After": {"description": "Seconds to wait",
                                                "schema": {"type": "integer", "minimum": 1}}}},
        },
    }}


def _paths() -> dict[str, Any]:
    return {
        "/health": {"get": {
            "summary": "Liveness: the gateway answers (200 while it runs, whatever the "
                       "engine's state, which the body reports without asking the engine)",
            "operationId": "health",
            "responses": {"200": _json("The gateway is alive", "Health")},
        }},
        "/health/live": {"get": {
            "summary": "Liveness, as /health",
            "operationId": "healthLive",
            "responses": {"200": _json("The gateway is alive", "Health")},
        }},
        "/health/ready": {"get": {
            "summary": "Readiness: the engine answers (ok) or is busy with requests in flight",
            "operationId": "healthReady",
            "responses": {"200": _json("Ready: status ok or busy", "Health"),
                          "503": _json("Not ready: status degraded, restarting or failed, "
                                       "with the reason", "Health")},
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics of the gateway",
            "operationId": "metrics",
            "responses": {"200": {"description": "Prometheus text exposition format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/v1/models": {"get": {
            "summary": "The model served (OpenAI list format)",
            "operationId": "listModels",
            "responses": {"200": _json("The served model", "ModelList"), "502": _ENGINE_DOWN,
                          "503": _ENGINE_RESTARTING},
        }},
        "/v1/completions": _generation("Text completion", "CompletionRequest", "Completion",
                                       stream=True),
        "/v1/chat/completions": _generation("Chat completion (models with a chat template)",
                                            "ChatCompletionRequest", "ChatCompletion",
                                            stream=True),
        "/v1/embeddings": _generation("Embeddings (embedding models)", "EmbeddingRequest",
                                      "EmbeddingList", stream=False),
        "/v1/knowledge/ask": _knowledge(
            "Answer a question from the knowledge graph, citing the passages (generated by "
            "the chat model served, else extracted)", "askKnowledge", "KnowledgeAskRequest",
            "Answer", "invalid_question"),
        "/v1/knowledge/search": _knowledge(
            "The passages of the knowledge graph that match a query (hybrid retrieval)",
            "searchKnowledge", "KnowledgeSearchRequest", "SearchResult", "invalid_query"),
        "/v1/feedback": {"post": {
            "summary": "Rate a logged answer (request logging on)",
            "operationId": "rate",
            "requestBody": {"required": True, "content": {
                JSON: {"schema": {"$ref": "#/components/schemas/FeedbackRequest"}}}},
            "responses": {
                "200": _json("The rating stored", "Feedback"),
                "400": _error("Not {id, rating, label?}, or a rating outside -1..1 (codes "
                              "invalid_feedback, feedback_refused)."),
                "404": _error("No interaction with that id, or request logging is off "
                              "(codes feedback_refused, feedback_disabled)."),
            },
        }},
    }


def _secure(spec: dict[str, Any]) -> None:
    spec["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "sk-sutazai-<id>.<secret>",
                   "description": "An API key from 'sutazai keys create' (what OpenAI clients "
                   "send as their api_key)."},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    spec["security"] = [{"bearer": []}, {"apiKey": []}]
    denials = {
        "401": _error("No API key, or an unknown, revoked or expired one (codes "
                      "missing_api_key, invalid_api_key, expired_api_key); with a "
                      "WWW-Authenticate header."),
        "403": _error("The key's role lacks the permission (code permission_denied)."),
        "429": {**_error("The key is over its rate limit (code rate_limit_exceeded)."),
                "headers": {"Retry-After": {"description": "Seconds to wait",
                                            "schema": {"type": "integer", "minimum": 1}}}},
    }
    for path, item in spec["paths"].items():
        for operation in item.values():
            if path in HEALTH_PATHS:
                operation["security"] = []  # the probes need no key
                continue
            operation["responses"].update(copy.deepcopy(denials))


def openapi_spec(*, auth: bool) -> dict[str, Any]:
    """A fresh OpenAPI 3.1 document of the gateway (callers may change their copy)."""
    from sutazai import __version__

    spec: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "SutazAI serving gateway", "version": __version__,
                 "description": "OpenAI-compatible endpoints in front of a llama.cpp or vLLM "
                 "engine, with Prometheus metrics and answer ratings."},
        "paths": _paths(),
        "components": {"schemas": copy.deepcopy(_SCHEMAS)},
    }
    if auth:
        _secure(spec)
    return spec


@functools.cache
def _validator(schema_name: str) -> Any:
    from jsonschema import Draft202012Validator

    root = {"$ref": f"#/components/schemas/{schema_name}",
            "components": {"schemas": _SCHEMAS}}
    return Draft202012Validator(root)


def request_problem(endpoint: str, payload: object) -> str | None:
    """Why ``payload`` is not a body this document accepts for ``/v1/<endpoint>``, or None.

    For the gateway to refuse with a 400 what an engine would otherwise answer with a 500
    (llama.cpp reports its own validation errors, and logprobs it cannot compute, as
    internal errors, with a traceback of the server's files in the message). Endpoints
    without a request schema have no problem. Needs ``jsonschema`` (imported on first use).
    """
    name = REQUEST_SCHEMAS.get(endpoint)
    if name is None:
        return None
    from jsonschema.exceptions import best_match

    error = best_match(_validator(name).iter_errors(payload))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "the body"
    message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    return f"{where}: {message} (see /openapi.json, schema {name})"
