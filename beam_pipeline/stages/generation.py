"""Glue shared by the model-calling stages: config, model access, the windowed call DoFn.

`GenerationConfig` is the frozen configuration of ExtractConcepts, GenerateInstructions,
GenerateResponses and JudgeSeeds. Two ways to reach the model:
- `model_server_url`: an existing OpenAI-compatible server shared by all workers;
- otherwise a managed vLLM server per worker process, started on first use (after preparing
  `model`, e.g. `smollm2`) and stopped when the worker no longer needs it or exits.

`ModelCallFn` turns one element into one request and routes the answer; a stage subclasses it
with its prompt builder, sampling, parser and output record, and `ModelStage` with its name.
Requests leave as soon as their element arrives and answers are emitted as soon as they come
back, with up to `2 * max_in_flight` requests outstanding per DoFn instance, so the server's
continuous batching stays full across batches instead of idling at the end of each batch. The
client's admission control decides how many of them are on the wire; while the engine is down
they wait (up to `engine_down_max_s`) instead of turning into dead letters. Every element leaves
exactly once: as outputs (main or rejected) or as a DeadLetter (client error, exhausted
retries, dead engine, unexpected exception). Finish-bundle drains everything still pending.
Each answered call also leaves a `ModelUsage` (tokens, cache hit) on the tagged `usage` output,
which the stage's accounting counts.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from beam_pipeline.config import GenerationConfig
from beam_pipeline.core import prompting
from beam_pipeline.core.prompting import Reason
from beam_pipeline.records import DeadLetter, Record, Rejection
from beam_pipeline.stages.common import (
    METRICS_NAMESPACE,
    USAGE,
    ModelUsage,
    StageFn,
    StageOutputs,
    apply_stage_fn,
)
from model_server.client import (
    Choice,
    ClientConfig,
    CompletionResult,
    ModelClient,
    SamplingParams,
)
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

    prompt: prompting.PromptText  # a completion text, or chat messages
    params: SamplingParams
    context: Any = None

    @property
    def chat(self) -> bool:
        return not isinstance(self.prompt, str)


@dataclasses.dataclass
class _Pending:
    element: Record
    request: ModelRequest
    future: concurrent.futures.Future
    window: Any
    timestamp: Any


Parser = Callable[[str, str | None], prompting.Parsed]


@dataclasses.dataclass(frozen=True)
class ModelStageSpec:
    """A model stage's name, parser and sampling (temperature, top_p and max tokens come from
    the config)."""

    stage: str
    parse: Parser  # (completion text, finish reason) -> prompting.Parsed
    seed_stage: str = ""  # whose per-item sampler seed each request sends
    stop: tuple[str, ...] = (prompting.EXAMPLE_STOP,)


class ModelCallFn(StageFn, metaclass=abc.ABCMeta):
    """A model stage's DoFn: batches in, one request per element, outputs routed as each
    answer arrives. A stage states only what is its own:
    - `SPEC`: its name, parser and sampling; `samples()` for n, or a whole `sampling(element)`;
    - `prompt(element)`: the prompt (text, or a built prompt `build` gets back);
    - `build(element, request, choice, value)`: the output record of one parsed choice, and
      `output_id(element, index)` when each choice's output has an id of its own.
    Calling, routing and the rejections (a missing choice, a completion that does not parse)
    exist only here."""

    SPEC: ClassVar[ModelStageSpec]
    EMITS_USAGE = True

    def __init__(self, config: GenerationConfig) -> None:
        super().__init__(self.SPEC.stage)
        stage = self.stage
        self.config = config
        self._requests = Metrics.counter(METRICS_NAMESPACE, f"{stage}_requests")
        self._retries = Metrics.counter(METRICS_NAMESPACE, f"{stage}_retries")
        self._cache_hits = Metrics.counter(METRICS_NAMESPACE, f"{stage}_cache_hits")
        self._tokens_in = Metrics.counter(METRICS_NAMESPACE, f"{stage}_prompt_tokens")
        self._tokens_out = Metrics.counter(METRICS_NAMESPACE, f"{stage}_completion_tokens")
        self._latency = Metrics.distribution(METRICS_NAMESPACE, f"{stage}_latency_ms")

    # -- what a stage states -------------------------------------------------------------

    @abc.abstractmethod
    def prompt(self, element: Any, /) -> Any:
        """The prompt (a text, or chat messages for `/v1/chat/completions`), or a built
        prompt: its `.prompt` is sent and `build` gets it back as `request.context` (e.g. the
        few-shot ids it showed, and the open `query` whose opener a chat reply starts with)."""

    def samples(self) -> int:
        return 1

    def sampling(self, element: Any, /) -> SamplingParams:
        return SamplingParams(
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            max_tokens=self.config.max_new_tokens,
            n=self.samples(),
            stop=self.SPEC.stop,
            seed=prompting.sampler_seed(self.SPEC.seed_stage, element.id),
        )

    @abc.abstractmethod
    def build(self, element: Any, /, request: ModelRequest, choice: Choice, value: Any) -> Record:
        """The output record of one parsed choice."""

    def output_id(self, element: Any, /, index: int) -> str:
        return element.id

    # -- the shared shape ----------------------------------------------------------------

    def request(self, element: Any) -> ModelRequest:
        built = self.prompt(element)
        if isinstance(built, str | list):
            return ModelRequest(built, self.sampling(element))
        return ModelRequest(built.prompt, self.sampling(element), context=built)

    def on_result(
        self, element: Any, request: ModelRequest, result: CompletionResult
    ) -> Iterator[Any]:
        """One output or one rejection per requested choice."""
        n = request.params.n
        by_index = {choice.index: choice for choice in result.choices}
        for index in range(n):
            output_id = self.output_id(element, index)
            choice = by_index.get(index)
            if choice is None:
                detail = f"server returned {len(result.choices)} of {n} choices"
                yield Rejection.of(self.stage, Reason.MISSING_CHOICE, element, detail, output_id)
                continue
            parsed = self.SPEC.parse(self.reply_text(request, choice), choice.finish_reason)
            if parsed.reason is not None:
                detail = f"{parsed.detail}; completion {completion_excerpt(choice.text)}"
                yield Rejection.of(self.stage, parsed.reason, element, detail, output_id)
                continue
            yield self.build(element, request, choice, parsed.value)

    @staticmethod
    def reply_text(request: ModelRequest, choice: Choice) -> str:
        """What the parser reads: the completion, or a chat reply without a repeated opener."""
        query = getattr(request.context, "query", "")
        if request.chat and query:
            return prompting.drop_echoed_opener(choice.text, query)
        return choice.text

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
                future = self._submit(request)
            except Exception as exc:  # a bad record must not stop the bundle
                yield from self.route([DeadLetter.of(self.stage, element, exc)], window, timestamp)
                continue
            self._pending[future] = _Pending(element, request, future, window, timestamp)
        yield from self._collect(limit=2 * self.config.max_in_flight)

    def finish_bundle(self) -> Iterator[Any]:
        yield from self._collect(limit=0)

    # -- internals ----------------------------------------------------------------------

    def _submit(self, request: ModelRequest) -> concurrent.futures.Future:
        if isinstance(request.prompt, str):
            return self._client.submit(request.prompt, request.params)
        return self._client.submit_chat(request.prompt, request.params)

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
                yield from self.route(self._outputs(pending), pending.window, pending.timestamp)

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

    def _outputs(self, pending: _Pending) -> list[Any]:
        element = pending.element
        try:
            result: CompletionResult = pending.future.result()
            self._account(result)
            if not result.ok:
                return [DeadLetter.of(self.stage, element, f"{result.error_kind}: {result.error}")]
            return list(self.on_result(element, pending.request, result))
        except Exception as exc:  # unexpected errors become dead letters
            return [DeadLetter.of(self.stage, element, exc)]

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


class ModelStage(beam.PTransform):
    """A model stage's composite: batches, then its `FN`; the step is named after the class."""

    FN: ClassVar[type[ModelCallFn]]

    def __init__(self, config: GenerationConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, items: beam.PCollection) -> StageOutputs:
        batches = items | "Batch" >> batch_elements(self.config.batch_size)
        return apply_stage_fn(batches, type(self).__name__, self.FN(self.config))


def completion_excerpt(text: str, limit: int = 300) -> str:
    text = text.strip()
    return json.dumps(text if len(text) <= limit else text[:limit] + "...", ensure_ascii=False)


def batch_elements(batch_size: int) -> beam.PTransform:
    return beam.BatchElements(min_batch_size=1, max_batch_size=batch_size)
