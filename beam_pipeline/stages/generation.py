"""Glue shared by the model-calling stages: config, model access, the windowed call DoFn.

`GenerationConfig` is the frozen configuration of ExtractConcepts, GenerateInstructions,
GenerateResponses and JudgeSeeds. Two ways to reach the model:
- `model_server_url`: an existing OpenAI-compatible server shared by all workers;
- otherwise a managed vLLM server per worker process, started on first use (after preparing
  `model`, e.g. `smollm2`) and stopped when the worker no longer needs it or exits.

`ModelCallFn` turns one element into one request and routes the answer. Requests leave as
soon as their element arrives and answers are emitted as soon as they come back, with up to
`2 * max_in_flight` requests outstanding per DoFn instance, so the server's continuous batching
stays full across batches instead of idling at the end of each batch. The client's admission
control decides how many of them are on the wire; while the engine is down they wait (up to
`engine_down_max_s`) instead of turning into dead letters. Every element leaves
exactly once: as outputs (main or rejected) or as a DeadLetter (client error, exhausted
retries, dead engine, unexpected exception). Finish-bundle drains everything still pending.
Each answered call also leaves a `ModelUsage` (tokens, cache hit) on the tagged `usage` output,
which the stage's accounting counts.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import traceback
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from beam_pipeline.config import GenerationConfig
from beam_pipeline.progress import progress
from beam_pipeline.records import DeadLetter, Record, Rejection, clip
from beam_pipeline.stages.common import (
    ERRORS,
    METRICS_NAMESPACE,
    REJECTED,
    USAGE,
    ModelUsage,
    StageFn,
)
from model_server.client import ClientConfig, CompletionResult, ModelClient, SamplingParams
from model_server.serve import ServeConfig

log = logging.getLogger(__name__)


class ModelAccess:
    """Opens the shared client (and the managed server) for one DoFn instance."""

    def __init__(self, config: GenerationConfig) -> None:
        self.config = config
        self.client: ModelClient | None = None
        self._client_config: ClientConfig | None = None
        self._serve_config: ServeConfig | None = None

    def open(self) -> ModelClient:
        from model_server import managed

        cfg = self.config
        if cfg.model_server_url:
            self._client_config = cfg.client_config(cfg.model_server_url, cfg.client_model_name)
        else:
            from model_server.prepare import prepare

            self._serve_config = cfg.serve_config(str(prepare(cfg.model)))
            server = managed.acquire_server(self._serve_config)
            self._client_config = cfg.client_config(server.base_url, server.model_name)
        if not cfg.request_seeds:
            log.warning(
                "per-request seeds are off (--no_request_seeds): samples are not reproducible"
            )
        self.client = managed.acquire_client(self._client_config)
        return self.client

    def close(self) -> None:
        from model_server import managed

        if self._client_config is not None:
            managed.release_client(self._client_config)
            self._client_config = None
        if self._serve_config is not None:
            managed.release_server(self._serve_config, self.config.server_linger_s)
            self._serve_config = None
        self.client = None


@dataclasses.dataclass(frozen=True)
class ModelRequest:
    """What one element asks the model, plus what its result handler needs back."""

    prompt: str
    params: SamplingParams
    context: Any = None


@dataclasses.dataclass
class _Pending:
    element: Record
    request: ModelRequest
    future: concurrent.futures.Future
    window: Any
    timestamp: Any


class ModelCallFn(StageFn):
    """Batches in, one request per element, outputs routed as each answer arrives."""

    EMITS_USAGE = True

    def __init__(self, stage: str, config: GenerationConfig) -> None:
        super().__init__(stage)
        self.config = config
        self._requests = Metrics.counter(METRICS_NAMESPACE, f"{stage}_requests")
        self._retries = Metrics.counter(METRICS_NAMESPACE, f"{stage}_retries")
        self._cache_hits = Metrics.counter(METRICS_NAMESPACE, f"{stage}_cache_hits")
        self._tokens_in = Metrics.counter(METRICS_NAMESPACE, f"{stage}_prompt_tokens")
        self._tokens_out = Metrics.counter(METRICS_NAMESPACE, f"{stage}_completion_tokens")
        self._latency = Metrics.distribution(METRICS_NAMESPACE, f"{stage}_latency_ms")

    # -- subclass API -------------------------------------------------------------------

    def request(self, element: Any) -> ModelRequest:
        raise NotImplementedError

    def on_result(
        self, element: Any, request: ModelRequest, result: CompletionResult
    ) -> Iterable[Any]:
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------------------

    def setup(self) -> None:
        self._access = ModelAccess(self.config)
        self._client = self._access.open()

    def teardown(self) -> None:
        access = getattr(self, "_access", None)
        if access is not None:
            access.close()

    def start_bundle(self) -> None:
        self._pending: collections.OrderedDict[concurrent.futures.Future, _Pending] = (
            collections.OrderedDict()
        )

    def process(  # type: ignore[override]
        self,
        batch: Iterable[Any],
        window: Any = beam.DoFn.WindowParam,
        timestamp: Any = beam.DoFn.TimestampParam,
    ) -> Iterator[Any]:
        for element in batch:
            try:
                request = self.request(element)
                future = self._client.submit(request.prompt, request.params)
            except Exception as exc:  # a bad record must not stop the bundle
                yield from self._wrap(self._dead_letter(element, exc), window, timestamp)
                continue
            self._pending[future] = _Pending(element, request, future, window, timestamp)
        yield from self._collect(limit=2 * self.config.max_in_flight)

    def finish_bundle(self) -> Iterator[Any]:
        yield from self._collect(limit=0)

    # -- internals ----------------------------------------------------------------------

    def _collect(self, limit: int) -> Iterator[Any]:
        """Emits every finished request; blocks while more than `limit` are outstanding."""
        while self._pending:
            done = [f for f in self._pending if f.done()]
            if not done and len(self._pending) > limit:
                finished, _ = concurrent.futures.wait(
                    list(self._pending), return_when=concurrent.futures.FIRST_COMPLETED
                )
                done = [f for f in self._pending if f in finished]
            if not done:
                return
            for future in done:
                pending = self._pending.pop(future)
                yield from self._usage(pending)
                yield from self._wrap(self._route(pending), pending.window, pending.timestamp)

    @staticmethod
    def _usage(pending: _Pending) -> Iterator[Any]:
        """The answered call's tokens, tagged `usage` for the accounting."""
        if pending.future.cancelled() or pending.future.exception() is not None:
            return
        result: CompletionResult = pending.future.result()
        usage = ModelUsage(result.prompt_tokens, result.completion_tokens, result.cached)
        yield beam.pvalue.TaggedOutput(
            USAGE, WindowedValue(usage, pending.timestamp, (pending.window,))
        )

    def _route(self, pending: _Pending) -> list[Any]:
        element = pending.element
        try:
            result: CompletionResult = pending.future.result()
            self._account(result)
            if not result.ok:
                return [
                    DeadLetter(
                        id=getattr(element, "id", ""),
                        stage=self.stage,
                        error=f"{result.error_kind}: {result.error}"[:2000],
                        record=clip(element.to_json()) if isinstance(element, Record) else "",
                    )
                ]
            return list(self.on_result(element, pending.request, result))
        except Exception as exc:  # unexpected errors become dead letters
            return [self._dead_letter(element, exc)]

    def _account(self, result: CompletionResult) -> None:
        if result.cached:
            self._cache_hits.inc()
            return
        self._requests.inc(max(result.attempts, 1))
        if result.attempts > 1:
            self._retries.inc(result.attempts - 1)
        self._tokens_in.inc(result.prompt_tokens)
        self._tokens_out.inc(result.completion_tokens)
        if result.ok:
            self._latency.update(int(result.latency_s * 1000))

    def _dead_letter(self, element: Any, exc: Exception) -> DeadLetter:
        return DeadLetter(
            id=str(getattr(element, "id", "")),
            stage=self.stage,
            error=f"{type(exc).__name__}: {exc}"[:2000],
            traceback=clip(traceback.format_exc(), 20_000),
            record=clip(element.to_json()) if isinstance(element, Record) else clip(repr(element)),
        )

    def _wrap(self, outputs: Any, window: Any, timestamp: Any) -> Iterator[Any]:
        if not isinstance(outputs, list):
            outputs = [outputs]
        for out in outputs:
            value = WindowedValue(out, timestamp, (window,))
            if isinstance(out, Rejection):
                self._rejected.inc()
                progress().note(self.step, "rejected")
                yield beam.pvalue.TaggedOutput(REJECTED, value)
            elif isinstance(out, DeadLetter):
                self._errors.inc()
                progress().note(self.step, "errors")
                yield beam.pvalue.TaggedOutput(ERRORS, value)
            else:
                self._out.inc()
                progress().note(self.step, "out")
                yield value


def rejection(
    stage: str, reason: str, record: Record, detail: str = "", record_id: str | None = None
) -> Rejection:
    """A Rejection of `record` (optionally under another id, e.g. a sample's)."""
    return Rejection(
        id=record_id or record.id,
        stage=stage,
        reason=reason,
        detail=detail[:2000],
        record=clip(record.to_json()),
    )


def completion_excerpt(text: str, limit: int = 300) -> str:
    text = text.strip()
    return json.dumps(text if len(text) <= limit else text[:limit] + "...", ensure_ascii=False)


def batch_elements(batch_size: int) -> beam.PTransform:
    return beam.BatchElements(min_batch_size=1, max_batch_size=batch_size)
