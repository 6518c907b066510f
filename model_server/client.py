"""The one HTTP client for an OpenAI-compatible server (vLLM).

    client = ModelClient(ClientConfig(base_url="http://127.0.0.1:8000", model="smollm2"))
    results = client.complete(prompts, SamplingParams(temperature=0.7, max_tokens=512, n=4))

- Completion (`/v1/completions`) and chat (`/v1/chat/completions`) modes.
- `submit()` returns a future per request, so a caller can keep the server busy across its
  own batches; all threads share one event loop, one connection pool and one limit.
- Admission control: a request goes on the wire only while this client's sequences in flight
  (a request with n samples counts n) stay under an adaptive limit, so that many worker
  processes together keep a server pool full without flooding its queue. The limit follows
  the server's own gauges (vLLM's `/metrics`: `vllm:num_requests_running` and
  `vllm:num_requests_waiting`, which count sequences), 429/503 answers, and, where `/metrics`
  is not reachable (e.g. behind a load balancer), the latency per output token. Time spent
  waiting for admission is not part of a request's timeout. `max_in_flight` caps the
  requests on the wire.
- Retries with bounded exponential back-off and jitter on connection errors, timeouts, 5xx
  and malformed responses. 429/503 honour Retry-After and do not use up retries. Other 4xx
  are not retried: the result carries the server's message as its `error`.
- Engine down: vLLM's API server can stay up while its engine is dead (requests then hang or
  fail). While work is pending a watchdog polls `/health`; on a down verdict the requests on
  the wire are withdrawn and wait, and `/health` is re-probed until it answers again, then
  they are sent again. A request fails with `error_kind="engine_dead"` only once the engine
  has stayed down longer than `engine_down_max_s`.
- Optional response cache (`cache_dir`, any fsspec path): a request whose answer is cached is
  not sent.
- Metrics: requests, retries, errors, cache hits, tokens in/out, latency, admission.

Errors never raise out of `complete()`/`chat()`: each result has either choices or `error`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import email.utils
import json
import logging
import math
import random
import statistics
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
ENGINE_DEAD = "engine_dead"  # the engine stayed down longer than engine_down_max_s
OVERLOADED = "overloaded"  # 429/503 for longer than engine_down_max_s
CLOSED = "closed"  # the client was closed while the request waited

RETRY_STATUS = {408, 409, 425}
OVERLOAD_STATUS = {429, 503}  # the server is busy: wait as asked, retries are not used up
OK, DEAD, UNKNOWN = "ok", "dead", "unknown"  # health probe states
RUNNING_GAUGE = "vllm:num_requests_running"
WAITING_GAUGE = "vllm:num_requests_waiting"


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
    latency_s: float = 0.0  # on the wire: admission and engine-down waits excluded
    queued_s: float = 0.0  # waiting for admission or for a down engine

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    base_url: str
    model: str
    max_in_flight: int = 64  # requests on the wire, at most (admission usually keeps fewer)
    timeout_s: float = 900.0  # per attempt on the wire; waiting for admission is not counted
    connect_timeout_s: float = 10.0
    max_retries: int = 6
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 300.0
    health_interval_s: float = 10.0
    health_timeout_s: float = 10.0
    health_failures_for_dead: int = 2
    # A request waits this long for a down engine (or a server answering 429/503) to come
    # back; only then does it fail with engine_dead (or overloaded).
    engine_down_max_s: float = 1800.0
    # Admission control (sequences in flight; see AdmissionLimit)
    admission: bool = True
    initial_limit: int = 16
    max_limit: int = 4096
    metrics_interval_s: float = 1.0
    target_queue_fraction: float = 0.5
    latency_tolerance: float = 2.0
    cache_dir: str | None = None
    api_key: str | None = None
    send_seed: bool = True  # False: strip per-request seeds (see ServeConfig on CPU)

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if not 1 <= self.initial_limit <= self.max_limit:
            raise ValueError("need 1 <= initial_limit <= max_limit")
        if self.engine_down_max_s < 0:
            raise ValueError("engine_down_max_s must be >= 0")
        if self.health_failures_for_dead < 1:
            raise ValueError("health_failures_for_dead must be >= 1")


class AdmissionLimit:
    """How many sequences one client may have in flight: a distributed AIMD controller.

    Every client of a server pool runs one, knowing only its own load and what the server
    reports. Decreases come from periodic signals, increases from completed requests (so the
    limit grows once per round trip, whatever the server's speed):
    - server gauges (running R, waiting W, in sequences): when W exceeds the target queue
      q = max(4, `queue_fraction` x R), the pool is oversubscribed by (R + W) / (R + q); each
      client scales its own in-flight load down by that ratio, so together they land on
      R + q whatever their number. A small queue is the target, not an empty one: a slot that
      frees is refilled at the next engine step instead of after a round trip. W is the
      smaller of the last two samples (new arrivals wait for the next step even when slots
      are free). While W < q / 2, each completed request of n sequences adds n (doubling
      per round trip, "slow start"); while q / 2 <= W <= q, it adds n / limit (about one
      per round trip).
    - 429/503: multiplicative decrease (x0.75, at most once per cool-down).
    - latency per output token (only without gauges): above `latency_tolerance` x the best
      seen, the limit shrinks in proportion; below 1.25 x it grows as in slow start, below
      half-way to the tolerance as above W > 0.
    The limit at most doubles per round trip, so a burst of growth overshoots by a bounded
    amount; decreases scale the current load, not the old limit, so repeated samples
    while the queue drains do not compound.
    """

    SLOW, AVOID = "slow", "avoid"

    def __init__(self, initial: float, max_limit: float = 4096.0, queue_fraction: float = 0.5,
                 latency_tolerance: float = 2.0, cooldown_s: float = 1.0) -> None:  # fmt: skip
        self.limit = float(initial)
        self.max_limit = float(max_limit)
        self.queue_fraction = queue_fraction
        self.latency_tolerance = latency_tolerance
        self.cooldown_s = cooldown_s
        self.growth: str | None = self.SLOW  # what the last signal allows
        self._cap = 2.0 * self.limit
        self._cap_at = time.monotonic()
        self.round_trip_s = 1.0  # the client keeps it current
        self._last_waiting = 0.0
        self._last_cut = -math.inf

    def _set(self, value: float) -> float:
        self.limit = min(self.max_limit, max(1.0, value))
        return self.limit

    def _allow(self, growth: str | None, in_flight: int) -> None:
        self.growth = growth
        now = time.monotonic()
        if growth is None or now - self._cap_at >= self.round_trip_s:
            self._cap = 2.0 * max(self.limit, in_flight, 1)
            self._cap_at = now

    def on_server_load(self, running: float, waiting: float, in_flight: int) -> float:
        # Arrivals sit in the queue until the next engine step even with free slots: only a
        # queue seen in two samples in a row counts.
        waiting, self._last_waiting = min(waiting, self._last_waiting), waiting
        queue = max(4.0, self.queue_fraction * running)
        if waiting > queue:
            self._allow(None, in_flight)
            return self._set(max(in_flight, 1) * (running + queue) / (running + waiting))
        self._allow(self.SLOW if waiting < queue / 2 else self.AVOID, in_flight)
        return self.limit

    def on_latency(self, ratio: float, in_flight: int, now: float) -> float:
        if ratio > self.latency_tolerance:
            self._allow(None, in_flight)
            if now - self._last_cut < self.cooldown_s:
                return self.limit
            self._last_cut = now
            factor = max(0.5, self.latency_tolerance / ratio)
            return self._set(min(self.limit, max(in_flight, 1)) * factor)
        if ratio < 1.25:
            self._allow(self.SLOW, in_flight)
        elif ratio < (1.0 + self.latency_tolerance) / 2:
            self._allow(self.AVOID, in_flight)
        else:
            self._allow(None, in_flight)
        return self.limit

    def on_overload(self, in_flight: int, now: float) -> float:
        self._allow(None, in_flight)
        if now - self._last_cut < self.cooldown_s:
            return self.limit
        self._last_cut = now
        return self._set(min(self.limit, max(in_flight, 1)) * 0.75)

    def on_completion(self, n: int, limited: bool) -> float:
        """A request of n sequences finished; `limited`: work waits on this limit."""
        if not limited or self.growth is None:
            return self.limit
        step = n if self.growth == self.SLOW else n / max(self.limit, 1.0)
        return self._set(min(self.limit + step, max(self._cap, self.limit)))


class LatencyTrack:
    """Seconds per output token: the best seen (slowly forgotten) and the recent median;
    and the recent median of request latency."""

    def __init__(self, window: int = 32, forget_per_s: float = 0.001) -> None:
        self.best = math.inf
        self._recent: collections.deque[float] = collections.deque(maxlen=window)
        self._seconds: collections.deque[float] = collections.deque(maxlen=window)
        self._forget = forget_per_s
        self._at = time.monotonic()

    def observe(self, seconds: float, tokens_per_sequence: float) -> None:
        value = seconds / max(1.0, tokens_per_sequence)
        now = time.monotonic()
        # The best creeps up so that a baseline from a faster past does not bind forever.
        self.best = min(self.best * (1.0 + self._forget) ** (now - self._at), value)
        self._at = now
        self._recent.append(value)
        self._seconds.append(seconds)

    def recent_s(self) -> float:
        """Median seconds on the wire of recent requests (inf before any)."""
        return statistics.median(self._seconds) if self._seconds else math.inf

    def ratio(self) -> float | None:
        if len(self._recent) < 4 or not math.isfinite(self.best) or self.best <= 0:
            return None
        return statistics.median(self._recent) / self.best


class _Gate:
    """FIFO admission by sequences (n-weighted) under the adaptive limit and a request cap.

    A request always goes when nothing of this client is in flight, so an n larger than the
    limit still runs (alone)."""

    def __init__(self, limit: AdmissionLimit | None, max_requests: int) -> None:
        self.limit = limit
        self.max_requests = max_requests
        self.sequences = 0
        self.requests = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def blocked_by_limit(self) -> bool:
        """Work is waiting and the adaptive limit, not the request cap, holds it back."""
        return (
            bool(self._waiters)
            and self.requests < self.max_requests
            and not self._fits(self._waiters[0][0])
        )

    def _fits(self, n: int) -> bool:
        if self.requests >= self.max_requests:
            return False
        if self.limit is None or self.sequences == 0:
            return True
        return self.sequences + n <= self.limit.limit

    def _take(self, n: int) -> None:
        self.sequences += n
        self.requests += 1

    async def acquire(self, n: int) -> None:
        if not self._waiters and self._fits(n):
            self._take(n)
            return
        future = asyncio.get_running_loop().create_future()
        entry = (n, future)
        self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(n)  # granted just before the cancellation arrived
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self.wake()
            raise

    def release(self, n: int) -> None:
        self.sequences -= n
        self.requests -= 1
        self.wake()

    def wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            n, future = self._waiters.popleft()
            if future.done():
                continue
            self._take(n)
            future.set_result(None)


class _Retry(Exception):
    """A transient failure; `delay_s` overrides the back-off when the server asked for one."""

    def __init__(
        self, message: str, status: int | None = None, delay_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.delay_s = delay_s


class _Overloaded(_Retry):
    """429/503: the server asks the client to slow down."""


class _EngineDown(Exception):
    """The request was withdrawn from the wire because the engine was declared down."""


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
        self.overloaded = 0  # 429/503 answers
        self.withdrawn = 0  # attempts taken off the wire because the engine went down
        self.outages = 0  # down verdicts
        self.latency_total_s = 0.0
        self.latency_max_s = 0.0
        self.queued_total_s = 0.0
        self.limit = 0.0  # the admission limit (sequences) at the last change
        self._latencies: list[float] = []

    def add(self, **values: float) -> None:
        with self._lock:
            for name, value in values.items():
                setattr(self, name, getattr(self, name) + value)

    def observe_latency(self, seconds: float, queued_s: float = 0.0) -> None:
        with self._lock:
            self.latency_total_s += seconds
            self.latency_max_s = max(self.latency_max_s, seconds)
            self.queued_total_s += queued_s
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
                "overloaded": self.overloaded,
                "withdrawn": self.withdrawn,
                "outages": self.outages,
                "admission_limit": self.limit,
                "latency_mean_s": self.latency_total_s / len(lat) if lat else 0.0,
                "latency_p50_s": p50,
                "latency_p95_s": p95,
                "latency_max_s": self.latency_max_s,
                "queued_mean_s": self.queued_total_s / len(lat) if lat else 0.0,
            }


def parse_gauges(text: str, names: Sequence[str]) -> dict[str, float]:
    """Sums of the named series in Prometheus text format (over all label sets)."""
    wanted = set(names)
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name not in wanted:
            continue
        try:
            value = float(line.rsplit(" ", 1)[-1])
        except ValueError:
            continue
        if math.isfinite(value):
            sums[name] = sums.get(name, 0.0) + value
    return sums


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
        self._down: str | None = None  # detail of the current down verdict
        self._down_since = 0.0
        self._active = 0  # requests between admission queue and answer (watchdog runs)
        self._watchdog: asyncio.Task | None = None
        self._controller: asyncio.Task | None = None
        self._check: asyncio.Future | None = None
        self._metrics_retry_at = 0.0  # /metrics unsupported until then
        self._latency = LatencyTrack()
        self.admission = (
            AdmissionLimit(
                config.initial_limit,
                config.max_limit,
                config.target_queue_fraction,
                config.latency_tolerance,
                cooldown_s=max(1.0, config.metrics_interval_s),
            )
            if config.admission
            else None
        )
        self.metrics.limit = self.admission.limit if self.admission else math.inf
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
        self._gate = _Gate(self.admission, self.config.max_in_flight)
        self._down_event = asyncio.Event()  # set while the engine is down
        self._up_event = asyncio.Event()  # set while it is up
        self._up_event.set()
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
        """The current down verdict's detail, or None while the engine is (thought) up."""
        return self._down

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
        """Turns a cancellation (close()) into an error result, never an exception."""
        try:
            return await self._request(mode, prompt, params)
        except asyncio.CancelledError:
            self.metrics.add(errors=1)
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
        self._active += 1
        self._ensure_background()
        try:
            result = await self._send_with_retries(mode, prompt, params)
        finally:
            self._active -= 1
        if result.ok:
            self.metrics.add(
                completed=1,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
            )
            self.metrics.observe_latency(result.latency_s, result.queued_s)
            if self.cache is not None and key is not None and len(result.choices) >= params.n:
                await asyncio.to_thread(self.cache.put, key, self._to_cached(result))
        else:
            self.metrics.add(errors=1)
        return result

    async def _send_with_retries(
        self, mode: str, prompt: Any, params: SamplingParams
    ) -> CompletionResult:
        text = self._prompt_text(prompt)
        started = time.monotonic()
        wire = 0.0  # seconds on the wire, summed over attempts
        attempt = retries = 0
        last = ""
        last_status: int | None = None
        overloaded_since: float | None = None

        def failed(error: str, kind: str, status: int | None = None) -> CompletionResult:
            total = time.monotonic() - started
            return CompletionResult(
                prompt=text, error=error, error_kind=kind, status_code=status, attempts=attempt,
                latency_s=wire, queued_s=total - wire,
            )  # fmt: skip

        while True:
            if self._down and not await self._wait_until_up():
                return failed(
                    f"engine dead: down longer than {self.config.engine_down_max_s:.0f} s "
                    f"({self._down})",
                    ENGINE_DEAD,
                )
            await self._gate.acquire(params.n)
            attempt += 1
            self.metrics.add(requests=1)
            sent = time.monotonic()
            result: CompletionResult | None = None
            outcome: Exception | None = None
            try:
                result = await self._send_once(mode, prompt, params, text, attempt)
            except (_EngineDown, _Fatal, _Retry) as exc:
                outcome = exc
            finally:
                self._gate.release(params.n)
            elapsed = time.monotonic() - sent
            wire += elapsed
            if result is not None:
                self._observe(result, elapsed, params.n)
                total = time.monotonic() - started
                return dataclasses.replace(result, latency_s=wire, queued_s=total - wire)
            if isinstance(outcome, _EngineDown):
                self.metrics.add(withdrawn=1)
                continue  # not a retry: it waits for the engine at the top of the loop
            if isinstance(outcome, _Fatal):
                return failed(str(outcome), outcome.kind, outcome.status)
            if isinstance(outcome, _Overloaded):
                self.metrics.add(overloaded=1)
                self._on_overload()
                now = time.monotonic()
                overloaded_since = overloaded_since if overloaded_since is not None else now
                if now - overloaded_since > self.config.engine_down_max_s:
                    return failed(f"overloaded for too long: {outcome}", OVERLOADED, outcome.status)
                delay = outcome.delay_s if outcome.delay_s is not None else self._backoff(attempt)
                await asyncio.sleep(min(delay, self.config.retry_after_max_s))
                continue
            assert isinstance(outcome, _Retry)
            last, last_status, server_delay = str(outcome), outcome.status, outcome.delay_s
            overloaded_since = None
            # A timeout or refused connection may mean the engine died: ask before retrying.
            if last_status is None or last_status >= 500:
                await self._check_dead_now()
                if self._down:
                    continue  # an outage is not the request's fault: no retry used
            retries += 1
            if retries > self.config.max_retries:
                return failed(f"gave up after {attempt} attempts: {last}", EXHAUSTED, last_status)
            self.metrics.add(retries=1)
            delay = self._backoff(retries)
            if server_delay is not None:
                delay = min(max(server_delay, delay * 0.1), self.config.retry_after_max_s)
            log.debug("retrying in %.2f s after: %s", delay, last)
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (attempt - 1))
        return ceiling * (0.5 + 0.5 * self._rng.random())  # equal jitter: spread, never zero

    async def _send_once(
        self, mode: str, prompt: Any, params: SamplingParams, text: str, attempt: int
    ) -> CompletionResult:
        body = {"model": self.config.model, **params.to_request()}
        if mode == "chat":
            body["messages"] = prompt
            url = f"{self._base}/v1/chat/completions"
        else:
            body["prompt"] = prompt
            url = f"{self._base}/v1/completions"
        post = asyncio.ensure_future(self._http.post(url, json=body))
        down = asyncio.ensure_future(self._down_event.wait())
        try:
            await asyncio.wait({post, down}, return_when=asyncio.FIRST_COMPLETED)
            if not post.done():  # the engine went down: withdraw (the server aborts it)
                raise _EngineDown()
            response = post.result()
        except httpx.TimeoutException as exc:
            raise _Retry(f"timeout: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise _Retry(f"connection error: {type(exc).__name__}: {exc}") from exc
        finally:
            for task in (post, down):
                if not task.done():
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await post
        status = response.status_code
        if status in OVERLOAD_STATUS:
            delay = _retry_after(response.headers.get("retry-after"))
            if status == 429 or delay is not None:
                raise _Overloaded(f"HTTP {status}: {_server_message(response)}", status, delay)
        if status >= 500 or status in RETRY_STATUS:
            raise _Retry(f"HTTP {status}: {_server_message(response)}", status)
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

    # -- admission control -----------------------------------------------------------

    def _set_limit(self) -> None:
        self.metrics.limit = self.admission.limit if self.admission is not None else math.inf
        self._gate.wake()

    def _observe(self, result: CompletionResult, seconds: float, n: int) -> None:
        if result.choices and result.completion_tokens:
            self._latency.observe(seconds, result.completion_tokens / len(result.choices))
        if self.admission is not None:
            self.admission.round_trip_s = self._latency.recent_s()
            self.admission.on_completion(n, self._gate.blocked_by_limit())
            self._set_limit()

    def _on_overload(self) -> None:
        if self.admission is not None:
            self.admission.on_overload(self._gate.sequences, time.monotonic())
            self._set_limit()

    async def _server_load(self) -> tuple[float, float] | None:
        """(running, waiting) sequences from the server's /metrics, or None."""
        if time.monotonic() < self._metrics_retry_at:
            return None
        try:
            response = await self._http.get(
                f"{self._base}/metrics", timeout=self.config.health_timeout_s
            )
        except httpx.HTTPError:
            return None
        gauges = parse_gauges(response.text, (RUNNING_GAUGE, WAITING_GAUGE))
        if response.status_code != 200 or len(gauges) < 2:
            self._metrics_retry_at = time.monotonic() + 60.0  # no gauges here: use latency
            return None
        return gauges[RUNNING_GAUGE], gauges[WAITING_GAUGE]

    async def _control(self) -> None:
        """Adjusts the admission limit while there is work."""
        while self._active and self.admission is not None:
            if self._down:
                await asyncio.sleep(self.config.metrics_interval_s)
                continue
            load = await self._server_load()
            if load is not None:
                self.admission.on_server_load(*load, self._gate.sequences)
            else:
                ratio = self._latency.ratio()
                if ratio is not None:
                    self.admission.on_latency(ratio, self._gate.sequences, time.monotonic())
            self._set_limit()
            # Several samples per round trip: fast servers are sampled more often.
            await asyncio.sleep(
                min(self.config.metrics_interval_s, max(0.1, self._latency.recent_s() / 4))
            )

    def _ensure_background(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = self._loop.create_task(self._watch())
        if self.admission is not None and (self._controller is None or self._controller.done()):
            self._controller = self._loop.create_task(self._control())

    # -- engine-down watchdog -------------------------------------------------------------

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
        """Declares the engine down after consecutive dead answers (spaced 1 s); concurrent
        callers share one check."""
        if self._down:
            return
        if self._check is None or self._check.done():
            self._check = asyncio.ensure_future(self._run_check())
        await asyncio.shield(self._check)

    async def _run_check(self) -> None:
        dead = 0
        while True:
            state, detail = await self._probe(self.config.health_timeout_s)
            if state != DEAD:
                return
            dead += 1
            if dead >= self.config.health_failures_for_dead:
                self._declare_down(detail)
                return
            await asyncio.sleep(1.0)

    def _declare_down(self, detail: str) -> None:
        if self._down:
            return
        self._down = detail
        self._down_since = time.monotonic()
        self.metrics.add(outages=1)
        log.error(
            "model server at %s looks down (%s): pending requests wait up to %.0f s for it",
            self._base, detail, self.config.engine_down_max_s,
        )  # fmt: skip
        self._up_event.clear()
        self._down_event.set()  # requests on the wire withdraw

    def _declare_up(self) -> None:
        if not self._down:
            return
        log.warning(
            "model server at %s answers again after %.0f s",
            self._base, time.monotonic() - self._down_since,
        )  # fmt: skip
        self._down = None
        self._down_event = asyncio.Event()
        self._up_event.set()

    async def _wait_until_up(self) -> bool:
        """Waits for the watchdog to see the engine up; False once it stayed down too long."""
        self._ensure_background()
        left = self._down_since + self.config.engine_down_max_s - time.monotonic()
        if left <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up_event.wait(), timeout=left)
        return self._down is None

    async def _watch(self) -> None:
        dead = unknown = 0
        needed = self.config.health_failures_for_dead
        interval = self.config.health_interval_s
        while self._active:
            if self._down:
                # Re-probe a down engine quickly at first, then every health_interval_s.
                await asyncio.sleep(min(interval, 1.0 + (time.monotonic() - self._down_since) / 4))
                state, _ = await self._probe(self.config.health_timeout_s)
                if state == OK:
                    self._declare_up()
                    dead = unknown = 0
                continue
            await asyncio.sleep(interval)
            if not self._active or self._down:
                continue
            state, detail = await self._probe(self.config.health_timeout_s)
            if state == OK:
                dead = unknown = 0
            elif state == DEAD:
                dead += 1
            else:
                unknown += 1
            # A /health that stays silent for several rounds is as good as dead.
            if dead >= needed or unknown >= 3 * needed:
                self._declare_down(detail)
                dead = unknown = 0

    def reset_dead(self) -> bool:
        """Clears a down verdict if the server is healthy again (the watchdog also does)."""
        healthy, _ = self.health()
        if healthy:
            self._loop.call_soon_threadsafe(self._declare_up)
        return healthy
