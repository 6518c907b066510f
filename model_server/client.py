"""The one HTTP client for an OpenAI-compatible server (vLLM).

    client = ModelClient(ClientConfig(base_url="http://127.0.0.1:8000", model="smollm2"))
    results = client.complete(prompts, SamplingParams(temperature=0.7, max_tokens=512, n=4))

- Completion (`/v1/completions`) and chat (`/v1/chat/completions`) modes.
- A batch goes out as concurrent requests, at most `max_in_flight` at a time for the whole
  client (all threads share one event loop and one limit), enough to keep vLLM's continuous
  batching full. `submit()` returns a future per request, so a caller can keep the server busy
  across its own batches.
- Retries with bounded exponential back-off and jitter on connection errors, timeouts, 429
  (honouring Retry-After), 5xx and malformed responses. Other 4xx are not retried: the result
  carries the server's message as its `error`.
- Dead engine: vLLM's API server can stay up while its engine is dead (requests then hang or
  fail). While requests are in flight a watchdog polls `/health`; when the engine is dead,
  every pending and new request fails at once with `error_kind="engine_dead"`.
- Optional response cache (`cache_dir`, any fsspec path): a request whose answer is cached is
  not sent.
- Metrics: requests, retries, errors, cache hits, tokens in/out, latency.

Errors never raise out of `complete()`/`chat()`: each result has either choices or `error`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import email.utils
import json
import logging
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx

from model_server.cache import ResponseCache, cache_key

log = logging.getLogger(__name__)

# error_kind values
CLIENT_ERROR = "client_error"  # 4xx other than 408/429: the request itself is wrong
EXHAUSTED = "exhausted"  # retries used up on transient failures
ENGINE_DEAD = "engine_dead"  # the server reports a dead engine
CLOSED = "closed"  # the client was closed while the request waited

RETRY_STATUS = {408, 409, 425, 429}
OK, DEAD, UNKNOWN = "ok", "dead", "unknown"  # health probe states


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))

    def to_request(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "n": self.n,
        }
        if self.stop:
            body["stop"] = list(self.stop)
        if self.seed is not None:
            body["seed"] = self.seed
        return body

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def without_seed(self) -> SamplingParams:
        return dataclasses.replace(self, seed=None)


@dataclasses.dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str | None
    index: int = 0


@dataclasses.dataclass(frozen=True)
class CompletionResult:
    """The outcome of one request: choices, or an error (never both empty and silent)."""

    prompt: str  # chat mode: the messages as JSON
    choices: tuple[Choice, ...] = ()
    error: str | None = None
    error_kind: str | None = None
    status_code: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    attempts: int = 0
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    base_url: str
    model: str
    max_in_flight: int = 64
    timeout_s: float = 900.0  # per request: a long completion under full load is slow on CPU
    connect_timeout_s: float = 10.0
    max_retries: int = 6
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 300.0
    health_interval_s: float = 10.0
    health_timeout_s: float = 10.0
    health_failures_for_dead: int = 2
    cache_dir: str | None = None
    api_key: str | None = None
    send_seed: bool = True  # False: strip per-request seeds (see ServeConfig on CPU)

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")


class _Retry(Exception):
    """A transient failure; `delay_s` overrides the back-off when the server asked for one."""

    def __init__(
        self, message: str, status: int | None = None, delay_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.delay_s = delay_s


class _Fatal(Exception):
    def __init__(self, message: str, kind: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


class ClientMetrics:
    """Thread-safe counters; `snapshot()` gives a plain dict."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0  # HTTP attempts sent, retries included
        self.completed = 0  # results returned with choices (cache hits included)
        self.retries = 0
        self.errors = 0
        self.cache_hits = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.latency_total_s = 0.0
        self.latency_max_s = 0.0
        self._latencies: list[float] = []

    def add(self, **values: float) -> None:
        with self._lock:
            for name, value in values.items():
                setattr(self, name, getattr(self, name) + value)

    def observe_latency(self, seconds: float) -> None:
        with self._lock:
            self.latency_total_s += seconds
            self.latency_max_s = max(self.latency_max_s, seconds)
            if len(self._latencies) < 100_000:
                self._latencies.append(seconds)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            lat = sorted(self._latencies)
            p50 = lat[len(lat) // 2] if lat else 0.0
            p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))] if lat else 0.0
            return {
                "requests": self.requests,
                "completed": self.completed,
                "retries": self.retries,
                "errors": self.errors,
                "cache_hits": self.cache_hits,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "latency_mean_s": self.latency_total_s / len(lat) if lat else 0.0,
                "latency_p50_s": p50,
                "latency_p95_s": p95,
                "latency_max_s": self.latency_max_s,
            }


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:2000]
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:2000]
        if body.get("message"):
            return str(body["message"])[:2000]
    return json.dumps(body)[:2000]


class ModelClient:
    """Concurrent, retrying, caching client; thread-safe; close() or use as a context manager."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.metrics = ClientMetrics()
        self.cache = ResponseCache(config.cache_dir) if config.cache_dir else None
        self._base = config.base_url.rstrip("/")
        if self._base.endswith("/v1"):
            self._base = self._base[: -len("/v1")]
        self._rng = random.Random()
        self._closed = False
        self._dead: str | None = None
        self._sending: set[asyncio.Task] = set()
        self._watchdog: asyncio.Task | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, name="model-client", daemon=True)
        self._thread.start()
        self._ready.wait()

    # -- lifecycle ------------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self.config.timeout_s, connect=self.config.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=self.config.max_in_flight + 4,
                max_keepalive_connections=self.config.max_in_flight + 4,
            ),
            headers=headers,
        )
        self._sem = asyncio.Semaphore(self.config.max_in_flight)
        self._ready.set()
        self._loop.run_forever()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._http.aclose()

        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API -----------------------------------------------------------------------

    def submit(self, prompt: str, params: SamplingParams) -> concurrent.futures.Future:
        """Sends one completion request; the future resolves to a CompletionResult."""
        return self._submit("completions", prompt, params)

    def submit_chat(
        self, messages: Sequence[dict[str, str]], params: SamplingParams
    ) -> concurrent.futures.Future:
        return self._submit("chat", [dict(m) for m in messages], params)

    def complete(
        self, prompts: Sequence[str], params: SamplingParams | Sequence[SamplingParams]
    ) -> list[CompletionResult]:
        """Completes every prompt concurrently; results in input order."""
        plist = self._params_list(params, len(prompts))
        futures = [self.submit(p, sp) for p, sp in zip(prompts, plist, strict=True)]
        return [f.result() for f in futures]

    def chat(
        self,
        messages_list: Sequence[Sequence[dict[str, str]]],
        params: SamplingParams | Sequence[SamplingParams],
    ) -> list[CompletionResult]:
        plist = self._params_list(params, len(messages_list))
        futures = [self.submit_chat(m, sp) for m, sp in zip(messages_list, plist, strict=True)]
        return [f.result() for f in futures]

    def health(self, timeout_s: float = 10.0) -> tuple[bool, str]:
        """(healthy, detail) from the server's /health, synchronously."""
        future = asyncio.run_coroutine_threadsafe(self._health(timeout_s), self._loop)
        return future.result()

    @property
    def engine_dead(self) -> str | None:
        return self._dead

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _params_list(
        params: SamplingParams | Sequence[SamplingParams], count: int
    ) -> list[SamplingParams]:
        if isinstance(params, SamplingParams):
            return [params] * count
        plist = list(params)
        if len(plist) != count:
            raise ValueError(f"{len(plist)} sampling params for {count} prompts")
        return plist

    def _submit(self, mode: str, prompt: Any, params: SamplingParams) -> concurrent.futures.Future:
        if self._closed:
            raise RuntimeError("ModelClient is closed")
        return asyncio.run_coroutine_threadsafe(self._guarded(mode, prompt, params), self._loop)

    async def _guarded(self, mode: str, prompt: Any, params: SamplingParams) -> CompletionResult:
        """Turns a cancellation (dead engine, close()) into an error result, never an exception."""
        try:
            return await self._request(mode, prompt, params)
        except asyncio.CancelledError:
            self.metrics.add(errors=1)
            if self._dead:
                return CompletionResult(
                    prompt=self._prompt_text(prompt),
                    error=f"engine dead: {self._dead}",
                    error_kind=ENGINE_DEAD,
                )
            return CompletionResult(
                prompt=self._prompt_text(prompt), error="client closed", error_kind=CLOSED
            )

    def _prompt_text(self, prompt: Any) -> str:
        return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)

    async def _request(self, mode: str, prompt: Any, params: SamplingParams) -> CompletionResult:
        if not self.config.send_seed:
            params = params.without_seed()
        key = None
        if self.cache is not None:
            key = cache_key(mode, self.config.model, prompt, dataclasses.asdict(params))
            hit = await asyncio.to_thread(self.cache.get, key)
            if hit is not None:
                result = self._parse_cached(prompt, hit)
                if result is not None:
                    self.metrics.add(completed=1, cache_hits=1)
                    return result
        started = time.monotonic()
        async with self._sem:
            task = asyncio.current_task()
            self._sending.add(task)
            self._ensure_watchdog()
            try:
                result = await self._send_with_retries(mode, prompt, params, started)
            finally:
                self._sending.discard(task)
        if result.ok:
            self.metrics.add(
                completed=1,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
            )
            self.metrics.observe_latency(result.latency_s)
            if key is not None and len(result.choices) >= params.n:
                await asyncio.to_thread(self.cache.put, key, self._to_cached(result))
        else:
            self.metrics.add(errors=1)
        return result

    async def _send_with_retries(
        self, mode: str, prompt: Any, params: SamplingParams, started: float
    ) -> CompletionResult:
        text = self._prompt_text(prompt)
        attempt = 0
        last = ""
        last_status: int | None = None
        while True:
            if self._dead:
                return CompletionResult(
                    prompt=text, error=f"engine dead: {self._dead}", error_kind=ENGINE_DEAD,
                    attempts=attempt, latency_s=time.monotonic() - started,
                )  # fmt: skip
            attempt += 1
            self.metrics.add(requests=1)
            try:
                return await self._send_once(mode, prompt, params, text, attempt, started)
            except _Fatal as exc:
                return CompletionResult(
                    prompt=text, error=str(exc), error_kind=exc.kind, status_code=exc.status,
                    attempts=attempt, latency_s=time.monotonic() - started,
                )  # fmt: skip
            except _Retry as exc:
                last, last_status, server_delay = str(exc), exc.status, exc.delay_s
            if attempt > self.config.max_retries:
                return CompletionResult(
                    prompt=text,
                    error=f"gave up after {attempt} attempts: {last}",
                    error_kind=EXHAUSTED, status_code=last_status,
                    attempts=attempt, latency_s=time.monotonic() - started,
                )  # fmt: skip
            # A timeout or refused connection may mean the engine died: ask before waiting.
            if last_status is None or last_status >= 500:
                await self._check_dead_now()
                if self._dead:
                    continue
            self.metrics.add(retries=1)
            delay = self._backoff(attempt)
            if server_delay is not None:
                delay = min(max(server_delay, delay * 0.1), self.config.retry_after_max_s)
            log.debug("retrying in %.2f s after: %s", delay, last)
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (attempt - 1))
        return ceiling * (0.5 + 0.5 * self._rng.random())  # equal jitter: spread, never zero

    async def _send_once(
        self, mode: str, prompt: Any, params: SamplingParams, text: str, attempt: int,
        started: float,
    ) -> CompletionResult:  # fmt: skip
        body = {"model": self.config.model, **params.to_request()}
        if mode == "chat":
            body["messages"] = prompt
            url = f"{self._base}/v1/chat/completions"
        else:
            body["prompt"] = prompt
            url = f"{self._base}/v1/completions"
        try:
            response = await self._http.post(url, json=body)
        except httpx.TimeoutException as exc:
            raise _Retry(f"timeout: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise _Retry(f"connection error: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if status >= 500 or status in RETRY_STATUS:
            delay = (
                _retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
            )
            raise _Retry(f"HTTP {status}: {_server_message(response)}", status, delay)
        if status >= 400:
            raise _Fatal(f"HTTP {status}: {_server_message(response)}", CLIENT_ERROR, status)
        try:
            data = response.json()
            raw_choices = data["choices"]
            choices = tuple(
                Choice(
                    text=(c["message"]["content"] or "") if mode == "chat" else c["text"],
                    finish_reason=c.get("finish_reason"),
                    index=int(c.get("index", i)),
                )
                for i, c in enumerate(raw_choices)
            )
            usage = data.get("usage") or {}
        except (ValueError, KeyError, TypeError) as exc:
            raise _Retry(
                f"malformed response: {type(exc).__name__}: {response.text[:200]!r}", status
            ) from exc
        return CompletionResult(
            prompt=text,
            choices=tuple(sorted(choices, key=lambda c: c.index)),
            status_code=status,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            attempts=attempt,
            latency_s=time.monotonic() - started,
        )

    @staticmethod
    def _to_cached(result: CompletionResult) -> dict[str, Any]:
        return {
            "choices": [
                {"text": c.text, "finish_reason": c.finish_reason, "index": c.index}
                for c in result.choices
            ],
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        }

    def _parse_cached(self, prompt: Any, value: dict[str, Any]) -> CompletionResult | None:
        try:
            choices = tuple(
                Choice(text=c["text"], finish_reason=c.get("finish_reason"), index=int(c["index"]))
                for c in value["choices"]
            )
            return CompletionResult(
                prompt=self._prompt_text(prompt),
                choices=choices,
                prompt_tokens=int(value.get("prompt_tokens", 0)),
                completion_tokens=int(value.get("completion_tokens", 0)),
                cached=True,
            )
        except (KeyError, TypeError, ValueError):
            return None

    # -- dead-engine watchdog -------------------------------------------------------------

    async def _probe(self, timeout_s: float) -> tuple[str, str]:
        """("ok" | "dead" | "unknown", detail). A slow /health is unknown, not dead: an
        overloaded API server answers late, a dead engine answers 503 or refuses."""
        try:
            response = await self._http.get(f"{self._base}/health", timeout=timeout_s)
        except httpx.TimeoutException:
            return UNKNOWN, "/health timed out"
        except httpx.HTTPError as exc:
            return DEAD, f"/health unreachable: {type(exc).__name__}"
        if response.status_code == 200:
            return OK, "ok"
        if response.status_code >= 500:
            return DEAD, f"/health answered {response.status_code}"
        return UNKNOWN, f"/health answered {response.status_code}"

    async def _health(self, timeout_s: float) -> tuple[bool, str]:
        state, detail = await self._probe(timeout_s)
        return state == OK, detail

    async def _check_dead_now(self) -> None:
        """Declares the engine dead after consecutive dead answers (spaced 1 s)."""
        for i in range(self.config.health_failures_for_dead):
            state, detail = await self._probe(self.config.health_timeout_s)
            if state != DEAD:
                return
            if i + 1 < self.config.health_failures_for_dead:
                await asyncio.sleep(1.0)
        self._declare_dead(detail)

    def _declare_dead(self, detail: str) -> None:
        if self._dead:
            return
        self._dead = detail
        log.error(
            "model server at %s looks dead (%s): failing pending requests", self._base, detail
        )
        # Requests waiting for a slot see the flag when they get one; these are on the wire.
        for task in list(self._sending):
            if task is not asyncio.current_task():
                task.cancel()

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = self._loop.create_task(self._watch())

    async def _watch(self) -> None:
        dead = unknown = 0
        needed = self.config.health_failures_for_dead
        while self._sending and not self._dead:
            await asyncio.sleep(self.config.health_interval_s)
            if not self._sending:
                break
            state, detail = await self._probe(self.config.health_timeout_s)
            if state == OK:
                dead = unknown = 0
            elif state == DEAD:
                dead += 1
            else:
                unknown += 1
            # A /health that stays silent for several rounds is as good as dead.
            if dead >= needed or unknown >= 3 * needed:
                self._declare_dead(detail)

    def reset_dead(self) -> bool:
        """Clears the dead flag if the server is healthy again (e.g. after a restart)."""
        healthy, _ = self.health()
        if healthy:
            self._dead = None
        return healthy
