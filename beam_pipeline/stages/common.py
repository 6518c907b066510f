"""Glue shared by every stage: routed outputs, dead letters, accounting, JSONL IO.

A stage DoFn subclasses `StageFn` and implements `handle(element)`, a generator that yields
records (main output) and `Rejection`s (tagged `rejected`). An unexpected exception becomes a
`DeadLetter` on the tagged `errors` output; the element's partial outputs are discarded, so
every input leaves the stage exactly once: as output, as a counted rejection or as a dead letter.

Accounting: `Accounting.count(...)` turns PCollections into (key, tally) pairs, a tally being
the count and the wall-clock times of the first and last element counted; at the end of the
graph counts are summed, first times take the minimum and last times the maximum, and the
result is written to `OUT/_run/counts-*.jsonl`, which `beam_pipeline.report` turns into
`report.json` once the pipeline has finished. This works on every runner (it uses no runner
metrics API). The model-calling steps emit one `ModelUsage` per answered call on a tagged
`usage` output; `count_stage` counts their calls and tokens with the stage's records.

Runner metrics (namespace `selfcodealign`) are keyed by step (`StageFn.step`, e.g.
`seeds.filter.FilterSeed_out`): a stage of several steps has one counter per step, never one
sum that mixes them. They are diagnostics; the report's counts come from the accounting.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from beam_pipeline.progress import progress
from beam_pipeline.records import DeadLetter, Record, Rejection
from beam_pipeline.shards import current_shards

METRICS_NAMESPACE = "selfcodealign"
MAIN = "main"
REJECTED = "rejected"
ERRORS = "errors"
USAGE = "usage"


class StageOutputs(NamedTuple):
    main: beam.PCollection
    rejected: beam.PCollection
    errors: beam.PCollection
    # The `usage` outputs of the stage's model-calling steps (none for other stages).
    usage: tuple[beam.PCollection, ...] = ()


class ModelUsage(NamedTuple):
    """What one answered model call cost: tokens in and out, and whether the cache answered."""

    prompt_tokens: int
    completion_tokens: int
    cached: bool


class StageFn(beam.DoFn):
    """Routes `handle()`'s yields to main/rejected, exceptions to errors; counts each."""

    # True for DoFns that emit `ModelUsage` on the tagged `usage` output.
    EMITS_USAGE = False

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.step = f"{stage}.{type(self).__name__.removesuffix('Fn')}"
        # Keyed by step: several steps of one stage must not add to one counter.
        self._out = Metrics.counter(METRICS_NAMESPACE, f"{self.step}_out")
        self._rejected = Metrics.counter(METRICS_NAMESPACE, f"{self.step}_rejected")
        self._errors = Metrics.counter(METRICS_NAMESPACE, f"{self.step}_errors")

    def handle(self, element: Any, /) -> Iterable[Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement handle()")

    def process(self, element: Any) -> Iterator[Any]:
        try:
            results = list(self.handle(element))
        except Exception as exc:  # the element's partial outputs are dropped with it
            results = [DeadLetter.of(self.stage, element, exc)]
        yield from self.route(results)

    def route(
        self, outputs: Iterable[Any], window: Any = None, timestamp: Any = None
    ) -> Iterator[Any]:
        """The one router: a Rejection to `rejected`, a DeadLetter to `errors`, anything else
        to the main output, each counted. With a window (outputs emitted outside `process`,
        e.g. in `finish_bundle`) each value is windowed explicitly."""
        for out in outputs:
            if isinstance(out, Rejection):
                tag, counter, event = REJECTED, self._rejected, "rejected"
            elif isinstance(out, DeadLetter):
                tag, counter, event = ERRORS, self._errors, "errors"
            else:
                tag, counter, event = None, self._out, "out"
            counter.inc()
            progress().note(self.step, event)
            value = out if window is None else WindowedValue(out, timestamp, (window,))
            yield value if tag is None else beam.pvalue.TaggedOutput(tag, value)


def apply_stage_fn(pcoll: beam.PCollection, label: str, fn: StageFn) -> StageOutputs:
    tags = (REJECTED, ERRORS, USAGE) if fn.EMITS_USAGE else (REJECTED, ERRORS)
    results = pcoll | label >> beam.ParDo(fn).with_outputs(*tags, main=MAIN)
    usage = (results[USAGE],) if fn.EMITS_USAGE else ()
    return StageOutputs(results[MAIN], results[REJECTED], results[ERRORS], usage)


def merge_outputs(label: str, *outputs: StageOutputs) -> StageOutputs:
    """Flattens the rejected and errors outputs of several steps; main is the last one's."""
    rejected = [o.rejected for o in outputs]
    errors = [o.errors for o in outputs]
    return StageOutputs(
        outputs[-1].main,
        rejected[0] if len(rejected) == 1 else rejected | f"{label}Rejected" >> beam.Flatten(),
        errors[0] if len(errors) == 1 else errors | f"{label}Errors" >> beam.Flatten(),
        tuple(u for o in outputs for u in getattr(o, "usage", ())),
    )


# ---------------------------------------------------------------------------------------------
# Accounting


# A tally: (count, first, last), the times in seconds since the epoch (None while nothing was
# counted). Summing counts and taking min/max of the times is associative and commutative, so
# bundles, workers and retried bundles' discarded outputs combine the same on every runner.
Tally = tuple[int, float | None, float | None]


def merge_tallies(tallies: Iterable[Tally]) -> Tally:
    count, first, last = 0, None, None
    for n, f, t in tallies:
        count += n
        first = f if first is None or (f is not None and f < first) else first
        last = t if last is None or (t is not None and t > last) else last
    return count, first, last


class _CountFn(beam.DoFn):
    """Elements -> (key, tally) pairs, combined inside each bundle: the final sum receives one
    element per key and bundle instead of one per record. `items_of(element)` names the keys
    the element counts under and by how much."""

    def __init__(self, items_of: Callable[[Any], Iterable[tuple[str, int]]]) -> None:
        self._items_of = items_of

    def start_bundle(self) -> None:
        self._tallies: dict[str, list[Any]] = {}

    def process(self, element: Any) -> None:
        now = time.time()
        for key, n in self._items_of(element):
            tally = self._tallies.get(key)
            if tally is None:
                self._tallies[key] = [n, now, now]
            else:
                tally[0] += n
                tally[2] = now

    def finish_bundle(self) -> Iterator[Any]:
        for key, (count, first, last) in self._tallies.items():
            yield GlobalWindows.windowed_value((key, (count, first, last)))


def _usage_items(stage: str, usage: ModelUsage) -> list[tuple[str, int]]:
    prefix = f"{stage}/model"
    items = [
        (f"{prefix}/calls", 1),
        (f"{prefix}/prompt_tokens", usage.prompt_tokens),
        (f"{prefix}/completion_tokens", usage.completion_tokens),
    ]
    if usage.cached:
        items.append((f"{prefix}/cached_calls", 1))
    else:  # what the server computed in this run: the tokens per second are made of these
        items.append((f"{prefix}/fresh_prompt_tokens", usage.prompt_tokens))
        items.append((f"{prefix}/fresh_completion_tokens", usage.completion_tokens))
    return items


USAGE_KEYS = (
    "calls",
    "cached_calls",
    "prompt_tokens",
    "completion_tokens",
    "fresh_prompt_tokens",
    "fresh_completion_tokens",
)


class Accounting:
    """Collects (key, tally) PCollections; `write()` combines them into one JSON file."""

    def __init__(self) -> None:
        self._parts: list[beam.PCollection] = []
        # Keys that must appear even when nothing was counted (an explicit 0 in the report).
        self._keys: set[str] = set()

    def _add(
        self,
        pcoll: beam.PCollection,
        label: str,
        items_of: Callable[[Any], Iterable[tuple[str, int]]],
    ) -> None:
        self._parts.append(pcoll | label.replace(".", "_") >> beam.ParDo(_CountFn(items_of)))

    def count(self, pcoll: beam.PCollection, stage: str, what: str, scale: int = 1) -> None:
        """Counts elements as `stage/what` (an explicit 0 for an empty PCollection); `scale`
        counts each element that many times (an instruction stands for its n samples)."""
        key = f"{stage}/{what}"
        self._keys.add(key)
        self._add(pcoll, f"Count_{stage}_{what}", lambda _, k=key, n=scale: ((k, n),))

    def count_rejections(self, pcoll: beam.PCollection, stage: str) -> None:
        """Counts `stage/rejected` and `stage/rejected/<reason>`."""
        total = f"{stage}/rejected"
        self._keys.add(total)
        self._add(
            pcoll,
            f"Count_{stage}_rejected",
            lambda r, t=total: ((t, 1), (f"{t}/{r.reason}", 1)),
        )

    def count_by(
        self,
        pcoll: beam.PCollection,
        stage: str,
        group: Callable[[Any], str | None],
        zero_keys: Iterable[str] = (),
        what: str = "by",
    ) -> None:
        """Counts `stage/<what>/<group(record)>` (e.g. by/category/difficulty/status); a record
        whose group is None is not counted; each of `zero_keys` (a group) appears with an
        explicit 0 when nothing fell into it."""
        self._keys.update(f"{stage}/{what}/{k}" for k in zero_keys)

        def items(record: Any, s: str = stage, w: str = what) -> tuple[tuple[str, int], ...]:
            name = group(record)
            return () if name is None else ((f"{s}/{w}/{name}", 1),)

        self._add(pcoll, f"Count_{stage}_{what}", items)

    def count_usage(self, pcoll: beam.PCollection, stage: str, label: str = "") -> None:
        """Counts `ModelUsage` elements as `stage/model/<calls, tokens...>`."""
        self._keys.update(f"{stage}/model/{k}" for k in USAGE_KEYS)
        self._add(pcoll, f"Count_{stage}_usage{label}", lambda u, s=stage: _usage_items(s, u))

    def count_stage(
        self, stage: str, inputs: beam.PCollection, outputs: StageOutputs, fan_out: int = 1
    ) -> None:
        """in/out/rejected/errors of a stage (and its model usage). With `fan_out` n, each
        input and each dead letter stands for the n records the input would have produced."""
        self.count(inputs, stage, "in", fan_out)
        self.count(outputs.main, stage, "out")
        self.count_rejections(outputs.rejected, stage)
        self.count(outputs.errors, stage, "errors", fan_out)
        for i, usage in enumerate(getattr(outputs, "usage", ())):
            self.count_usage(usage, stage, str(i))

    def write(self, pipeline: beam.Pipeline, path_prefix: str) -> None:
        if not self._parts:
            return
        zeros = pipeline | "CountKeys" >> beam.Create(
            [(key, (0, None, None)) for key in sorted(self._keys)]
        )
        (
            [zeros, *self._parts]
            | "FlattenCounts" >> beam.Flatten()
            | "SumCounts" >> beam.CombinePerKey(merge_tallies)
            | "CountsToJson" >> beam.Map(_tally_json)
            | "WriteCounts"
            >> beam.io.WriteToText(path_prefix, file_name_suffix=".jsonl", num_shards=1)
        )


def _tally_json(item: tuple[str, Tally]) -> str:
    key, (count, first, last) = item
    row: dict[str, Any] = {"key": key, "count": count}
    if first is not None:
        row.update(first=round(first, 3), last=round(last or first, 3))
    return json.dumps(row)


# ---------------------------------------------------------------------------------------------
# JSONL IO

SHARD_TEMPLATE = "-SSSSS-of-NNNNN"


class WriteJsonl(beam.PTransform):
    """Writes records as `DIR/part-00000-of-000NN.jsonl`; num_shards=0 lets the runner choose."""

    def __init__(self, directory: str, num_shards: int = 0) -> None:
        super().__init__()
        self.directory = directory.rstrip("/")
        self.num_shards = num_shards

    def expand(self, pcoll: beam.PCollection) -> beam.pvalue.PDone:
        return (
            pcoll
            | "ToJson"
            >> beam.Map(lambda r: r.to_json() if isinstance(r, Record) else json.dumps(r))
            | "Write"
            >> beam.io.WriteToText(
                f"{self.directory}/part",
                file_name_suffix=".jsonl",
                num_shards=self.num_shards,
                shard_name_template=SHARD_TEMPLATE,
            )
        )


class ReadJsonl(beam.PTransform):
    """Reads the current shard set of `DIR` (`shards.current_shards`: never an earlier run's
    leftovers) back into records of `record_type`. No shards is an error."""

    def __init__(self, directory: str, record_type: type[Record]) -> None:
        super().__init__()
        self.directory = directory.rstrip("/")
        self.record_type = record_type

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        paths = current_shards(self.directory)
        if not paths:
            raise FileNotFoundError(f"{self.directory} holds no complete part-*-of-N.jsonl set")
        return (
            pbegin
            | "Shards" >> beam.Create(paths)
            | "Read" >> beam.io.ReadAllFromText()
            | "Parse" >> beam.Map(self.record_type.from_json)
        )


class WriteStageOutputs(beam.PTransform):
    """Writes a stage's main output, its rejections and its dead letters under `out_dir`."""

    def __init__(self, out_dir: str, stage: str, num_shards: int = 0):
        super().__init__()
        self.out_dir = out_dir.rstrip("/")
        self.stage = stage
        self.num_shards = num_shards

    def expand(self, outputs: tuple) -> None:  # type: ignore[override]
        # Beam may hand the NamedTuple over as a plain tuple; its usage part is not written.
        main, rejected, errors = outputs[0], outputs[1], outputs[2]
        main | "WriteMain" >> WriteJsonl(f"{self.out_dir}/{self.stage}", self.num_shards)
        # Side outputs are sharded like the main one: one shard would put a whole run's
        # rejections on one worker.
        rejected | "WriteRejected" >> WriteJsonl(
            f"{self.out_dir}/rejected/{self.stage}", self.num_shards
        )
        errors | "WriteErrors" >> WriteJsonl(f"{self.out_dir}/errors/{self.stage}", self.num_shards)
