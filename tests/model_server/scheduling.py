"""A scripted OpenAI-compatible server that schedules like vLLM, for load tests and benches.

- `slots` sequence slots. A request with n samples becomes n sequences (vLLM's engine fans
  parallel sampling out into child requests), queued FIFO behind the running ones.
- Continuous batching: every `step_s` the engine fills free slots from the head of the queue,
  then every running sequence gains one token. A sequence is done after its length, a
  deterministic draw in [min_tokens, max_tokens] (capped by the request's `max_tokens`); a
  request answers when all its sequences are done.
- A client that disconnects aborts its request: its sequences leave the queue or free their
  slots at the next step (vLLM aborts a request whose connection closes).
- `GET /metrics`: `vllm:num_requests_running` and `vllm:num_requests_waiting` (sequences) in
  Prometheus text, as vLLM exports them; with `metrics=False` it answers 404 (a load balancer
  that does not pass them through).
- `GET /health`: 200, or 503 during `outage(seconds)`: the engine makes no progress, new
  generation requests get 500, and the requests it held are lost when it comes back (500).
- Content comes from `scripted_text`, so the generation stages parse the answers.
- Accounting: busy slots and queue length per step, and for every sequence the steps it ran
  and whether its answer was delivered, so a bench can compute useful utilisation.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import threading
import time
from typing import Any

from tests.model_server.scripted import scripted_text


@dataclasses.dataclass(eq=False)
class _Request:
    n: int
    future: asyncio.Future
    remaining: int = 0
    aborted: bool = False
    sequences: list[_Sequence] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class _Sequence:
    request: _Request
    length: int
    tokens: int = 0
    start_step: int = -1


@dataclasses.dataclass(frozen=True)
class Step:
    t: float  # time.monotonic() at the step
    busy: int  # sequences decoded in this step
    waiting: int  # sequences queued after admission
    down: bool


@dataclasses.dataclass(frozen=True)
class Span:
    start_step: int
    end_step: int  # exclusive
    delivered: bool  # its request's answer reached the client


def sequence_length(prompt: str, seed: Any, index: int, lo: int, hi: int) -> int:
    h = int(hashlib.sha256(f"{prompt}\x00{seed}\x00{index}".encode()).hexdigest()[:8], 16)
    return lo + h % (hi - lo + 1)


class SchedulingServer:
    """`start()`/`stop()` or use as a context manager; all state lives on its own loop."""

    def __init__(
        self,
        slots: int = 16,
        step_s: float = 0.05,
        min_tokens: int = 4,
        max_tokens: int = 12,
        metrics: bool = True,
        model: str = "scripted",
    ) -> None:
        self.slots = slots
        self.step_s = step_s
        self.min_tokens = min_tokens
        self.max_tokens = max_tokens
        self.metrics_enabled = metrics
        self.model = model
        self.port = 0
        self.steps: list[Step] = []
        self.spans: list[Span] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self._queue: collections.deque[_Sequence] = collections.deque()
        self._running: list[_Sequence] = []
        self._down_until = 0.0
        self._down = False
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._engine: asyncio.Task | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mean_service_s(self) -> float:
        """Seconds one sequence of average length runs once admitted."""
        return self.step_s * (self.min_tokens + self.max_tokens) / 2

    def __enter__(self) -> SchedulingServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control (any thread) -------------------------------------------------------------

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)

            async def boot() -> None:
                self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
                self.port = self._server.sockets[0].getsockname()[1]
                self._engine = asyncio.ensure_future(self._engine_loop())
                ready.set()

            self._loop.run_until_complete(boot())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="scheduling-server", daemon=True)
        self._thread.start()
        ready.wait()

    def stop(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def outage(self, seconds: float) -> None:
        """The engine goes down now for `seconds`: /health 503, no progress, new work 500."""

        def begin() -> None:
            self._down_until = time.monotonic() + seconds
            self._down = True
            self.counts["outages"] += 1

        self._loop.call_soon_threadsafe(begin)

    def reset(self) -> None:
        def clear() -> None:
            self.steps.clear()
            self.spans.clear()
            self.counts.clear()

        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop).result()
        self._loop.call_soon_threadsafe(clear)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop).result()

    def snapshot(self) -> tuple[list[Step], list[Span], dict[str, int]]:
        async def take() -> tuple[list[Step], list[Span], dict[str, int]]:
            return list(self.steps), list(self.spans), dict(self.counts)

        return asyncio.run_coroutine_threadsafe(take(), self._loop).result(timeout=10)

    # -- engine ---------------------------------------------------------------------------

    def _check_up(self) -> None:
        """Ends an outage whose time is over: the restarted engine has lost what it held."""
        if self._down and time.monotonic() >= self._down_until:
            self._down = False
            lost = {s.request for s in self._queue} | {s.request for s in self._running}
            for seq in self._running:
                self._record(seq, delivered=False)
            self._queue.clear()
            self._running.clear()
            for request in lost:
                if not request.future.done():
                    request.future.set_exception(RuntimeError("engine restarted"))

    def _record(self, seq: _Sequence, delivered: bool) -> None:
        if seq.start_step >= 0:
            self.spans.append(Span(seq.start_step, seq.start_step + seq.tokens, delivered))

    async def _engine_loop(self) -> None:
        while True:
            await asyncio.sleep(self.step_s)
            self._check_up()
            now = time.monotonic()
            if self._down:
                self.steps.append(Step(now, 0, len(self._queue), True))
                continue
            step = len(self.steps)
            self._running = [s for s in self._running if not s.request.aborted]
            while self._queue and len(self._running) < self.slots:
                seq = self._queue.popleft()
                if seq.request.aborted:
                    continue
                seq.start_step = step
                self._running.append(seq)
            self.steps.append(Step(now, len(self._running), len(self._queue), False))
            still = []
            for seq in self._running:
                seq.tokens += 1
                if seq.tokens < seq.length:
                    still.append(seq)
                    continue
                seq.request.remaining -= 1
                if seq.request.remaining == 0 and not seq.request.future.done():
                    seq.request.future.set_result(None)
            self._running = still

    # -- HTTP -----------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                answer = await self._route(method, path, body, reader)
                if answer is None:  # the client went away
                    break
                status, payload, content_type = answer
                reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error",
                          503: "Service Unavailable"}.get(status, "")  # fmt: skip
                writer.write(
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            return  # the client went away: nothing to answer
        finally:
            writer.close()

    async def _route(
        self, method: str, path: str, body: bytes, reader: asyncio.StreamReader
    ) -> tuple[int, bytes, str] | None:
        self._check_up()
        if method == "GET" and path == "/health":
            self.counts["health"] += 1
            return (503 if self._down else 200), b"", "application/json"
        if method == "GET" and path == "/metrics":
            self.counts["metrics"] += 1
            if not self.metrics_enabled:
                return 404, b"not found", "text/plain"
            labels = f'{{engine="0",model_name="{self.model}"}}'
            text = (
                "# TYPE vllm:num_requests_running gauge\n"
                f"vllm:num_requests_running{labels} {float(len(self._running))}\n"
                "# TYPE vllm:num_requests_waiting gauge\n"
                f"vllm:num_requests_waiting{labels} {float(len(self._queue))}\n"
            )
            return 200, text.encode(), "text/plain; version=0.0.4"
        if method == "GET" and path == "/v1/models":
            return 200, json.dumps({"data": [{"id": self.model}]}).encode(), "application/json"
        if method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            return await self._generate(json.loads(body or b"{}"), reader)
        return 404, b'{"error": {"message": "not found"}}', "application/json"

    async def _generate(
        self, body: dict[str, Any], reader: asyncio.StreamReader
    ) -> tuple[int, bytes, str] | None:
        self.counts["requests"] += 1
        if self._down:
            self.counts["failed"] += 1
            return 500, b'{"error": {"message": "engine dead"}}', "application/json"
        chat = "messages" in body
        prompt = body["messages"][-1]["content"] if chat else body.get("prompt", "")
        seed = body.get("seed")
        n = int(body.get("n", 1))
        cap = int(body.get("max_tokens") or self.max_tokens)
        request = _Request(n=n, future=self._loop.create_future(), remaining=n)
        for index in range(n):
            length = sequence_length(prompt, seed, index, self.min_tokens, self.max_tokens)
            request.sequences.append(_Sequence(request, min(length, cap)))
        self._queue.extend(request.sequences)
        self.counts["sequences"] += n
        gone = asyncio.ensure_future(reader.read(1))  # b"" once the client disconnects
        try:
            await asyncio.wait({request.future, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not gone.done():
                gone.cancel()
                # The next request on this connection may read only once this read is gone.
                with contextlib.suppress(asyncio.CancelledError):
                    await gone
        if not request.future.done():
            request.aborted = True
            self.counts["aborted"] += 1
            for seq in request.sequences:
                self._record(seq, delivered=False)
            return None
        if request.future.exception() is not None:
            self.counts["failed"] += 1
            return 500, b'{"error": {"message": "engine restarted"}}', "application/json"
        choices, tokens = [], 0
        for index, seq in enumerate(request.sequences):
            text = scripted_text(prompt, seed, index)
            tokens += seq.length
            finish = "length" if seq.length >= cap else "stop"
            if chat:
                choices.append({"index": index, "finish_reason": finish,
                                "message": {"role": "assistant", "content": text}})  # fmt: skip
            else:
                choices.append({"index": index, "text": text, "finish_reason": finish})
        for seq in request.sequences:
            self._record(seq, delivered=True)
        self.counts["delivered"] += 1
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": tokens}
        payload = json.dumps({"choices": choices, "usage": usage}).encode()
        return 200, payload, "application/json"


def utilisation(steps: list[Step], spans: list[Span], slots: int, end_t: float) -> dict[str, float]:
    """Busy slots / capacity from the first busy step up to `end_t` (the moment the clients'
    remaining work could no longer fill the slots), outage steps excluded. `useful` counts
    only slot-steps of sequences whose answers were delivered."""
    useful = [0] * len(steps)
    for span in spans:
        if span.delivered:
            for i in range(span.start_step, min(span.end_step, len(steps))):
                useful[i] += 1
    first = next((i for i, s in enumerate(steps) if s.busy), None)
    if first is None:
        return {"useful": 0.0, "busy": 0.0, "steps": 0}
    window = [i for i in range(first, len(steps)) if steps[i].t <= end_t and not steps[i].down]
    if not window:
        return {"useful": 0.0, "busy": 0.0, "steps": 0}
    capacity = slots * len(window)
    return {
        "useful": sum(useful[i] for i in window) / capacity,
        "busy": sum(steps[i].busy for i in window) / capacity,
        "steps": len(window),
    }
