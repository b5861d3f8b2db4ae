"""Errors in the shape OpenAI clients parse: a JSON body, or an event that ends a stream."""

from __future__ import annotations

import json
import math

from starlette.responses import JSONResponse


def openai_error(status: int, message: str, code: str, kind: str = "invalid_request_error",
                 retry_after_s: float | None = None) -> JSONResponse:
    headers = None if retry_after_s is None else {"Retry-After": str(math.ceil(retry_after_s))}
    return JSONResponse({"error": {"message": message, "type": kind, "param": None,
                                   "code": code}}, status_code=status, headers=headers)


def error_event(message: str, code: str) -> bytes:
    """An OpenAI-style error as a server-sent event: how a stream already answered 200
    says it failed (the ``openai`` client raises it as an APIError)."""
    error = {"message": message, "type": "server_error", "param": None, "code": code}
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
