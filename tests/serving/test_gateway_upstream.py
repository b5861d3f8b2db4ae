"""The gateway against an engine connection that fails at the worst moment.

The upstream here is a raw socket server, not a real engine: the fault under test (a
connection closed after the request went out, before any answer) is what a real engine's
uvicorn does when its keep-alive timer closes an idle connection the gateway is reusing,
and no real engine can be made to do it on cue."""

from __future__ import annotations

import json
import socket
import struct
import threading

import httpx
import pytest

from sutazai.serving.gateway import GatewayThread, create_app
from sutazai.serving.process import free_port
from tests.helpers import upstream_engine


class DropsFirstConnection:
    """Reads each request; closes the first connection unanswered (with a reset when
    ``reset``: the client then sees a read error, not a clean end), answers the others."""

    def __init__(self, reset: bool = False) -> None:
        self.reset = reset
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.connections = 0
        self.bodies: list[dict[str, object]] = []
        self.heads: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                self.connections += 1
                request = self._read_request(connection)
                if self.connections == 1:
                    if self.reset:  # SO_LINGER 0: close sends RST instead of FIN
                        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                              struct.pack("ii", 1, 0))
                    continue  # closed without a byte of answer
                head, body = request.split(b"\r\n\r\n", 1)
                self.heads.append(head.lower())
                self.bodies.append(json.loads(body))
                data = json.dumps({"model": "tiny", "choices": [{"text": " Paris"}],
                                   "usage": {"completion_tokens": 1}}).encode()
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                   b"Connection: close\r\nContent-Length: "
                                   + str(len(data)).encode() + b"\r\n\r\n" + data)

    @staticmethod
    def _read_request(connection: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += connection.recv(65536)
        head, body = data.split(b"\r\n\r\n", 1)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += connection.recv(65536)
        return head + b"\r\n\r\n" + body

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_a_connection_dropped_before_any_answer_is_retried_once_on_a_fresh_one(
        reset: bool) -> None:
    """Also: the caller's key stays with the gateway; the engine never sees it."""
    upstream = DropsFirstConnection(reset)
    try:
        with GatewayThread(create_app(upstream_engine(upstream.url)), "127.0.0.1",
                           free_port()) as gateway:
            answer = httpx.post(f"{gateway.url}/v1/completions",
                                json={"prompt": "The capital of France is", "max_tokens": 1},
                                headers={"Authorization": "Bearer sk-sutazai-0123456789ab.s3",
                                         "X-API-Key": "sk-sutazai-0123456789ab.s3",
                                         "X-Request-Id": "r-1"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["text"] == " Paris"
        assert upstream.connections == 2  # dropped once, answered on the second
        assert upstream.bodies == [{"prompt": "The capital of France is", "max_tokens": 1,
                                    "model": "tiny"}]
        [head] = upstream.heads
        assert b"x-request-id: r-1" in head  # other headers pass
        assert b"sk-sutazai" not in head and b"authorization" not in head
    finally:
        upstream.close()
