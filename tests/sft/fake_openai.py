"""A minimal OpenAI-compatible completions server whose answers are looked up by prompt.

Used to drive the evaluation through the real HTTP client with known completions (for example
the canonical HumanEval solutions). A prompt that is not in the table gets a 400 error.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeCompletionsServer:
    def __init__(self, answers: Mapping[str, str], model: str = "fake") -> None:
        self.answers = dict(answers)
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> FakeCompletionsServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"data": [{"id": server.model}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                text = server.answers.get(body.get("prompt"))
                if text is None:
                    self._send(400, {"error": {"message": "unknown prompt"}})
                    return
                # Honour stop strings as a server does: the text ends before the first one.
                reason = "length"
                for stop in body.get("stop") or []:
                    if stop in text:
                        text, reason = text[: text.index(stop)], "stop"
                choice = {"index": 0, "text": text, "finish_reason": reason}
                self._send(200, {"choices": [choice], "usage": {}})

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()
