"""Hostile input against the serving gateway: schemathesis generates requests from the
gateway's own OpenAPI document (:mod:`sutazai.serving.openapi`) and sends them to a real
gateway fronting a real llama.cpp engine with the real Gemma 3 270M GGUF, with request
logging on so ``/v1/feedback`` reaches the learning store.

Checks on every answer: no 5xx, a status code the document lists, a documented content
type, and a body that matches the documented schema. Valid requests (positive mode) and
requests that break the schema (negative mode) are both sent: a client error must come
back as a documented 4xx, never as a server error.

Speed: the engine runs with a 128-token context (the least SutazAI allows), so a request
that generates until the context is full (what llama.cpp does with ``max_tokens`` null or
0) costs seconds, not minutes; the test's copy of the document caps ``max_tokens`` at 4 for
valid requests. Examples per operation are bounded; the example database is off and the
seed fixed, so a run repeats the last one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sutazai.config import Settings
from sutazai.learning.datastore import FeedbackStore
from sutazai.repository import open_repository
from sutazai.serving.engines import RunningEngine, start_engine
from sutazai.serving.gateway import GatewayThread, create_app
from sutazai.serving.openapi import HEALTH_PATHS, openapi_spec
from sutazai.serving.process import free_port
from sutazai.workflows.mirror import mirror_catalog
from tests.conftest import gemma_entry

pytestmark = pytest.mark.slow

CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
          schemathesis.checks.content_type_conformance,
          schemathesis.checks.response_schema_conformance]
TEST_MAX_TOKENS = 4
REQUEST_TIMEOUT_S = 20.0


def fuzz_spec(auth: bool = False) -> dict[str, Any]:
    """The served document, with valid ``max_tokens`` capped so generation stays quick."""
    spec = copy.deepcopy(openapi_spec(auth=auth))
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        schema = spec["components"]["schemas"][name]["properties"]["max_tokens"]
        schema["maximum"] = TEST_MAX_TOKENS
    return spec


SCHEMA = schemathesis.openapi.from_dict(fuzz_spec())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path
           ) -> Iterator[tuple[Settings, RunningEngine, FeedbackStore]]:
    home = tmp_path_factory.mktemp("fuzz-api")
    config = Settings(home=home / ".sutazai", catalog=home / "catalog.yaml",
                      llamacpp_context=128, request_logging=True)
    config.catalog.write_text(yaml.safe_dump({"models": [gemma_entry(gemma_gguf)]}))
    [outcome] = mirror_catalog(config, register=False)
    assert outcome.error is None, outcome.error
    running = start_engine(config, open_repository(config).get("gemma3-270m"))
    store = FeedbackStore.open(config)
    try:
        yield config, running, store
    finally:
        store.close()
        running.stop()


@pytest.fixture(scope="module")
def gateway(engine: tuple[Settings, RunningEngine, FeedbackStore]) -> Iterator[str]:
    _, running, store = engine
    app = create_app(running, feedback=store)

    async def document(request: Request) -> JSONResponse:
        return JSONResponse(openapi_spec(auth=False))

    # Until the gateway serves it itself (a route added there wins: routes match in order).
    app.router.routes.append(Route("/openapi.json", document))
    with GatewayThread(app, "127.0.0.1", free_port()) as served:
        yield served.url


@pytest.mark.parametrize("auth", [False, True])
def test_the_document_is_valid_openapi_3_1(auth: bool) -> None:
    spec = openapi_spec(auth=auth)
    schemathesis.openapi.from_dict(spec).validate()  # the OpenAPI 3.1 meta-schema
    for schema in spec["components"]["schemas"].values():
        jsonschema_rs.meta.validate(schema)  # each a valid JSON Schema 2020-12
    health = spec["paths"]["/health"]["get"]
    assert ("security" in health and health["security"] == []) is auth
    for path, item in spec["paths"].items():
        denials = {"401", "403", "429"} & set(item[next(iter(item))]["responses"])
        assert denials == ({"401", "403", "429"} if auth and path not in HEALTH_PATHS
                           else set())


def test_the_gateway_serves_its_document(gateway: str) -> None:
    served = httpx.get(f"{gateway}/openapi.json").json()
    assert served == openapi_spec(auth=False)
    loaded = schemathesis.openapi.from_dict(served)
    assert sorted(op.ok().label for op in loaded.get_all_operations()) == sorted(
        op.label for op in OPERATIONS)


# Negative mode needs something to break: the operations that take a request body.
RUNS = [pytest.param(op, mode, id=f"{op.label}-{mode.value}") for op in OPERATIONS
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if mode is GenerationMode.POSITIVE or op.method.upper() == "POST"]


@pytest.mark.parametrize(("operation", "mode"), RUNS)
def test_fuzzed_requests_get_documented_answers(
    gateway: str, operation: Any, mode: GenerationMode
) -> None:
    examples = 8 if operation.method.upper() == "GET" else 25

    @seed(7)
    @settings(max_examples=examples, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        case.call_and_validate(base_url=gateway, checks=CHECKS, timeout=REQUEST_TIMEOUT_S)

    fuzz()


# What the fuzzer found, shrunk by hand: each answered 500 (a traceback in the gateway, or
# llama.cpp's own validation error, with its source paths, passed through as a 500), or 200.
FOUND = [
    ("/v1/completions", "[1]"), ("/v1/completions", "null"), ("/v1/models", '"x"'),
    ("/v1/completions", '{"prompt": "hi", "max_tokens": 2, "logprobs": 0}'),
    ("/v1/completions", '{"prompt": ["a", "b"], "max_tokens": 2}'),
    ("/v1/completions", '{"prompt": "hi", "max_tokens": 2, "stream": null}'),
    # not a 500, but a request that generates until the context is full, at any size
    ("/v1/completions", '{"prompt": "hi", "max_tokens": 0}'),
    ("/v1/completions", '{"prompt": "hi", "max_tokens": null}'),
    ("/v1/feedback", '{"id": 1e400, "rating": 0}'),
    ("/v1/feedback", '{"id": 1, "rating": 0, "label": 5}'),
    ("/v1/feedback", '{"id": 100000000000000000000000, "rating": 0}'),
]


@pytest.mark.parametrize(("path", "body"), FOUND)
def test_bodies_the_fuzzer_found_are_client_errors(gateway: str, path: str, body: str) -> None:
    answer = httpx.post(f"{gateway}{path}", content=body, timeout=REQUEST_TIMEOUT_S,
                        headers={"content-type": "application/json"})
    assert 400 <= answer.status_code < 500, answer.text
    error = answer.json()["error"]
    assert error["message"] and "Traceback" not in error["message"]
    assert "site-packages" not in error["message"]


def test_a_logged_answer_can_be_rated(gateway: str) -> None:
    """The one feedback path random ids cannot reach: rate an answer that was logged."""
    answer = httpx.post(f"{gateway}/v1/completions",
                        json={"prompt": "The sky is", "max_tokens": 2, "temperature": 0})
    assert answer.status_code == 200
    interaction = int(answer.headers["x-sutazai-interaction-id"])
    operation = SCHEMA["/v1/feedback"]["POST"]
    case = operation.Case(body={"id": interaction, "rating": 0.5, "label": "good"},
                          media_type="application/json")
    rated = case.call_and_validate(base_url=gateway, checks=CHECKS)
    assert rated.json() == {"id": interaction, "rating": 0.5, "label": "good"}


# --- with API keys: the document with auth=True ------------------------------------------

AUTH_SCHEMA = schemathesis.openapi.from_dict(fuzz_spec(auth=True))


@pytest.fixture(scope="module")
def guarded(engine: tuple[Settings, RunningEngine, FeedbackStore]
            ) -> Iterator[tuple[str, dict[str, str]]]:
    """A gateway that needs keys, and the Authorization header of each kind of caller."""
    from sutazai.security.access import AccessGuard, KeyTable, new_key

    config, running, store = engine
    keys = {role: new_key(f"fuzz-{role}", role) for role in ("viewer", "operator")}
    table = config.home / "secrets" / config.api_keys_secret  # the file provider's layout
    table.parent.mkdir(parents=True, exist_ok=True)
    table.touch(mode=0o600)
    table.write_text(KeyTable(keys={e.id: e for _, e in keys.values()}).model_dump_json())
    callers = {role: f"Bearer {key}" for role, (key, _) in keys.items()}
    callers.update(nobody="", garbage="Bearer sk-sutazai-000000000000.not-a-real-key-at-all")
    guard = AccessGuard(config).require_keys()
    with GatewayThread(create_app(running, feedback=store, guard=guard), "127.0.0.1",
                       free_port()) as served:
        yield served.url, callers


@pytest.mark.parametrize("operation", [r.ok() for r in AUTH_SCHEMA.get_all_operations()],
                         ids=lambda op: op.label)
def test_callers_with_and_without_keys_get_documented_answers(
    guarded: tuple[str, dict[str, str]], operation: Any
) -> None:
    url, callers = guarded

    @seed(7)
    @settings(max_examples=12, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(), who=st.sampled_from(sorted(callers)))
    def fuzz(case: Any, who: str) -> None:
        headers = {"Authorization": callers[who]} if callers[who] else {}
        answer = case.call_and_validate(base_url=url, checks=CHECKS, headers=headers,
                                        timeout=REQUEST_TIMEOUT_S)
        if who in ("nobody", "garbage") and operation.path not in HEALTH_PATHS:
            assert answer.status_code == 401

    fuzz()
