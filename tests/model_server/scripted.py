"""A scripted OpenAI-compatible server on loopback: deterministic content, injected faults.

Content depends only on the prompt, the seed and the choice index, so a pipeline's output is
comparable across runners. Faults are chosen by markers in the item part of the prompt (the
text after the last `## Example`), so few-shot examples never trigger them:

    FAULT:500x2      500 on the first two attempts, then a normal answer
    FAULT:429        429 with Retry-After: 1 on the first attempt
    FAULT:TIMEOUT    the first attempt answers only after `slow_s`
    FAULT:DROP       the first attempt's connection is closed without an answer
    FAULT:MALFORMED  the first attempt gets a 200 with a body that is not JSON
    FAULT:ALWAYS500  500 on every attempt
    FAULT:400        400 with an error message
    FAULT:LENGTH     every choice ends with finish_reason "length"
    FAULT:FEWER      one choice fewer than asked
    FAULT:NOTESTS    a response without a <tests> section
    FAULT:NOCLOSE    a response without </response>
    FAULT:EMPTY      empty text
    FAULT:DEAD       the engine "dies": /health answers 503 and this request hangs
    FAULT:ECHO       chat only: the reply first repeats the query's last line (an opener)
    BADDOC           the docstring judge answers "no"

Also runnable as a process (`python -m tests.model_server.scripted --port N`), accepting and
ignoring vLLM's flags, to stand in for vLLM under `VLLMServer`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULT = re.compile(r"FAULT:([A-Z0-9x]+)")


# Chat mode (`--prompt_mode chat`): the last user turn stops before the section to write; its
# first line says which stage it is, and so which opener a completion prompt would end with.
CHAT_OPENERS = {
    "<instruction>": "<response>",
    "### Snippet": "### Concepts",
    "### Properties": "### Task",
    "### Function": "### Good docstring:",
}


def chat_prompt(messages: list[dict[str, Any]]) -> str:
    """The last user turn with its stage's opener after it, as a completion prompt ends."""
    last = str(messages[-1]["content"])
    heading = last.split("\n", 1)[0].strip()
    return f"{last}\n\n{CHAT_OPENERS.get(heading, '')}".rstrip()


def item_part(prompt: str) -> str:
    return prompt.rsplit("## Example", 1)[-1]


def scripted_text(prompt: str, seed: Any, index: int) -> str:
    """Deterministic content in the shape each stage expects."""
    h = hashlib.sha256(f"{prompt}\x00{seed}\x00{index}".encode()).hexdigest()[:8]
    tail = prompt.rstrip()
    item = item_part(prompt)
    if tail.endswith("### Concepts"):
        return f"\nconcept {h}, loops, recursion\n\n"
    if tail.endswith("### Task"):
        return f"\nWrite a Python function `f_{h}()` that returns the string '{h}'.\n\n"
    if tail.endswith("<response>"):
        code = f"```python\ndef f_{h}():\n    return '{h}'\n```"
        tests = f"```python\nassert f_{h}() == '{h}'\n```"
        if "FAULT:NOTESTS" in item:
            return f"\nReturn a constant.\n\n{code}\n</response>\n\n"
        if "FAULT:NOCLOSE" in item:
            return f"\nReturn a constant.\n\n{code}\n"
        return f"\nReturn a constant.\n\n{code}\n</response>\n\n<tests>\n{tests}\n"
    if tail.endswith("### Good docstring:"):
        return " no" if "BADDOC" in item else " yes"
    return f"\nok {h}"


class ScriptedServer:
    """Threaded HTTP server; `start()`/`stop()` or use as a context manager."""

    def __init__(self, model: str = "scripted", slow_s: float = 3.0, hang_s: float = 30.0,
                 delay_s: float = 0.0, port: int = 0) -> None:  # fmt: skip
        self.model = model
        self.slow_s = slow_s
        self.hang_s = hang_s
        self.delay_s = delay_s  # every generation request takes this long (concurrency tests)
        self.health_delay_s = 0.0  # /health answers this late (an overloaded API server)
        self.port = port
        self.lock = threading.Lock()
        self.dead = False
        self.attempts: dict[str, int] = {}
        self.attempt_times: dict[str, list[float]] = {}
        self.generation_requests = 0
        self.health_requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.prompts_seen: list[str] = []
        self.requests_seen: list[tuple[str, dict[str, Any]]] = []  # (path, body) per request
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ScriptedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(
                self, status: int, body: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/health":
                    with server.lock:
                        server.health_requests += 1
                    time.sleep(server.health_delay_s)
                    self._send(503 if server.dead else 200, b"")
                elif self.path == "/v1/models":
                    self._send(200, json.dumps({"data": [{"id": server.model}]}).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path not in ("/v1/completions", "/v1/chat/completions"):
                    self._send(404, b'{"error": {"message": "not found"}}')
                    return
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server.handle_generation(self, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def reset_counts(self) -> None:
        with self.lock:
            self.generation_requests = 0
            self.attempts.clear()
            self.attempt_times.clear()
            self.prompts_seen.clear()
            self.requests_seen.clear()
            self.max_in_flight = 0

    def handle_generation(self, handler: Any, body: dict[str, Any]) -> None:
        chat = "messages" in body
        prompt = chat_prompt(body["messages"]) if chat else body.get("prompt", "")
        seed = body.get("seed")
        n = int(body.get("n", 1))
        key = hashlib.sha256(f"{prompt}\x00{seed}\x00{n}".encode()).hexdigest()
        with self.lock:
            self.generation_requests += 1
            attempt = self.attempts.get(key, 0) + 1
            self.attempts[key] = attempt
            self.attempt_times.setdefault(key, []).append(time.monotonic())
            self.prompts_seen.append(prompt)
            self.requests_seen.append((handler.path, body))
        faults = set(FAULT.findall(item_part(prompt)))
        if self.delay_s:
            time.sleep(self.delay_s)
        if "DEAD" in faults or self.dead:
            self.dead = True
            time.sleep(self.hang_s)
            handler._send(500, b'{"error": {"message": "engine dead"}}')
            return
        if "ALWAYS500" in faults or ("500x2" in faults and attempt <= 2):
            handler._send(500, b'{"error": {"message": "internal error"}}')
            return
        if "429" in faults and attempt == 1:
            handler._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "1"})
            return
        if "400" in faults:
            message = "This model's maximum context length is 4096 tokens (scripted)"
            handler._send(400, json.dumps({"error": {"message": message}}).encode())
            return
        if "TIMEOUT" in faults and attempt == 1:
            time.sleep(self.slow_s)
        if "DROP" in faults and attempt == 1:
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if "MALFORMED" in faults and attempt == 1:
            handler._send(200, b'{"choices": [ this is not json')
            return
        count = max(0, n - 1) if "FEWER" in faults else n
        choices = []
        completion_tokens = 0
        for index in range(count):
            text = "" if "EMPTY" in faults else scripted_text(prompt, seed, index)
            if chat and "ECHO" in faults:
                text = prompt.rstrip().rsplit("\n", 1)[-1] + text
            completion_tokens += len(text.split())
            finish = "length" if "LENGTH" in faults else "stop"
            if chat:
                choices.append(
                    {"index": index, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish}
                )  # fmt: skip
            else:
                choices.append({"index": index, "text": text, "finish_reason": finish})
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": completion_tokens}
        handler._send(200, json.dumps({"choices": choices, "usage": usage}).encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--model", default="scripted")
    args, _ = parser.parse_known_args(argv)
    server = ScriptedServer(model=args.served_model_name or args.model, port=args.port)
    server.start()
    print(f"scripted server on {server.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
