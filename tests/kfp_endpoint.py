"""A local stand-in for the Kubeflow Pipelines API server, for the submission tests.

This is NOT Kubeflow. A Kubeflow Pipelines API server needs a Kubernetes cluster (Argo,
MySQL, object storage), which cannot run on the machines these tests run on, so this
module serves, over HTTP on 127.0.0.1, only the part of the ``v2beta1`` REST API that
``kfp.Client`` (2.17) calls when SutazAI submits a pipeline, and nothing else:

* ``GET /apis/v2beta1/healthz`` — the client's constructor checks it;
* ``GET /apis/v2beta1/experiments?filter=...`` and ``POST /apis/v2beta1/experiments`` —
  find or create the experiment by display name;
* ``POST /apis/v2beta1/runs`` — create a run from an inline ``pipeline_spec`` and
  ``runtime_config.parameters``;
* ``GET /apis/v2beta1/runs/{id}`` — the run, which moves to ``final_state`` after
  ``polls_until_done`` polls (``wait_for_run_completion`` polls it).

Nothing runs: the stand-in records what it was sent so a test can check the submission
(experiment, compiled spec, arguments, bearer token), and reports the state the test chose.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class KfpEndpoint:
    def __init__(self, final_state: str = "SUCCEEDED", polls_until_done: int = 1) -> None:
        self.final_state = final_state
        self.polls_until_done = polls_until_done
        self.experiments: dict[str, str] = {}  # display name -> id
        self.runs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str]] = []  # method, path, Authorization
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> KfpEndpoint:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, method: str, path: str, query: dict[str, list[str]],
                body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path == "/apis/v2beta1/healthz":
            return 200, {"commit_sha": "stand-in", "tag_name": "2.5.0", "multi_user": False}
        if path == "/apis/v2beta1/experiments" and method == "GET":
            wanted = json.loads(query.get("filter", ["{}"])[0]).get("predicates", [{}])[0]
            name = wanted.get("stringValue") or wanted.get("string_value")
            found = [{"experiment_id": i, "display_name": n}
                     for n, i in self.experiments.items() if n == name]
            return 200, {"experiments": found, "total_size": len(found)}
        if path == "/apis/v2beta1/experiments" and method == "POST":
            experiment_id = self.experiments.setdefault(body["display_name"], uuid.uuid4().hex)
            return 200, {"experiment_id": experiment_id, "display_name": body["display_name"]}
        if path == "/apis/v2beta1/runs" and method == "POST":
            run_id = uuid.uuid4().hex
            self.runs[run_id] = {**body, "run_id": run_id, "state": "PENDING", "polls": 0}
            return 200, {"run_id": run_id, "display_name": body.get("display_name"),
                         "state": "PENDING"}
        if path.startswith("/apis/v2beta1/runs/") and method == "GET":
            run = self.runs.get(path.rsplit("/", 1)[1])
            if run is None:
                return 404, {"error": "run not found", "code": 5}
            run["polls"] += 1
            run["state"] = (self.final_state if run["polls"] >= self.polls_until_done
                            else "RUNNING")
            return 200, {"run_id": run["run_id"], "display_name": run.get("display_name"),
                         "experiment_id": run.get("experiment_id"), "state": run["state"]}
        return 404, {"error": f"the stand-in does not implement {method} {path}", "code": 12}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                endpoint.requests.append((self.command, parts.path,
                                          self.headers.get("Authorization", "")))
                status, answer = endpoint._answer(self.command, parts.path,
                                                  parse_qs(parts.query),
                                                  json.loads(raw) if raw else {})
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args: object) -> None:
                pass

        return Handler
