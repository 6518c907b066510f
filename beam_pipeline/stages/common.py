"""Glue shared by every stage: routed outputs, dead letters, accounting, JSONL IO.

A stage DoFn subclasses `StageFn` and implements `handle(element)`, a generator that yields
records (main output) and `Rejection`s (tagged `rejected`). An unexpected exception becomes a
`DeadLetter` on the tagged `errors` output; the element's partial outputs are discarded, so
every input leaves the stage exactly once: as output, as a counted rejection or as a dead letter.

Accounting: `Accounting.count(...)` turns PCollections into (key, count) pairs; at the end of
the graph they are summed and written to `OUT/_run/counts-*.jsonl`, which `beam_pipeline.report`
turns into `report.json` once the pipeline has finished. This works on every runner (it uses
no runner metrics API).
"""

from __future__ import annotations

import json
from collections import Counter
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


class StageOutputs(NamedTuple):
    main: beam.PCollection
    rejected: beam.PCollection
    errors: beam.PCollection


class StageFn(beam.DoFn):
    """Routes `handle()`'s yields to main/rejected, exceptions to errors; counts each."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.step = f"{stage}.{type(self).__name__.removesuffix('Fn')}"
        self._out = Metrics.counter(METRICS_NAMESPACE, f"{stage}_out")
        self._rejected = Metrics.counter(METRICS_NAMESPACE, f"{stage}_rejected")
        self._errors = Metrics.counter(METRICS_NAMESPACE, f"{stage}_errors")

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
    results = pcoll | label >> beam.ParDo(fn).with_outputs(REJECTED, ERRORS, main=MAIN)
    return StageOutputs(results[MAIN], results[REJECTED], results[ERRORS])


def merge_outputs(label: str, *outputs: StageOutputs) -> StageOutputs:
    """Flattens the rejected and errors outputs of several steps; main is the last one's."""
    rejected = [o.rejected for o in outputs]
    errors = [o.errors for o in outputs]
    return StageOutputs(
        outputs[-1].main,
        rejected[0] if len(rejected) == 1 else rejected | f"{label}Rejected" >> beam.Flatten(),
        errors[0] if len(errors) == 1 else errors | f"{label}Errors" >> beam.Flatten(),
    )


# ---------------------------------------------------------------------------------------------
# Accounting


class _CountFn(beam.DoFn):
    """Elements -> (key, count) pairs, summed inside each bundle: the final sum receives one
    element per key and bundle instead of one per record."""

    def __init__(self, keys_of: Callable[[Any], Iterable[str]], scale: int = 1) -> None:
        self._keys_of = keys_of
        self._scale = scale

    def start_bundle(self) -> None:
        self._counts: Counter[str] = Counter()

    def process(self, element: Any) -> None:
        for key in self._keys_of(element):
            self._counts[key] += self._scale

    def finish_bundle(self) -> Iterator[Any]:
        for key, count in self._counts.items():
            yield GlobalWindows.windowed_value((key, count))


class Accounting:
    """Collects (key, count) PCollections; `write()` sums them into one JSON file."""

    def __init__(self) -> None:
        self._parts: list[beam.PCollection] = []
        # Keys that must appear even when nothing was counted (an explicit 0 in the report).
        self._keys: set[str] = set()

    def _add(
        self,
        pcoll: beam.PCollection,
        label: str,
        keys_of: Callable[[Any], Iterable[str]],
        scale: int = 1,
    ) -> None:
        self._parts.append(pcoll | label.replace(".", "_") >> beam.ParDo(_CountFn(keys_of, scale)))

    def count(self, pcoll: beam.PCollection, stage: str, what: str, scale: int = 1) -> None:
        """Counts elements as `stage/what` (an explicit 0 for an empty PCollection); `scale`
        counts each element that many times (an instruction stands for its n samples)."""
        key = f"{stage}/{what}"
        self._keys.add(key)
        self._add(pcoll, f"Count_{stage}_{what}", lambda _, k=(key,): k, scale)

    def count_rejections(self, pcoll: beam.PCollection, stage: str) -> None:
        """Counts `stage/rejected` and `stage/rejected/<reason>`."""
        total = f"{stage}/rejected"
        self._keys.add(total)
        self._add(
            pcoll,
            f"Count_{stage}_rejected",
            lambda r, t=total: (t, f"{t}/{r.reason}"),
        )

    def count_by(
        self,
        pcoll: beam.PCollection,
        stage: str,
        group: Callable[[Any], str],
        zero_keys: Iterable[str] = (),
    ) -> None:
        """Counts `stage/by/<group(record)>` (e.g. category/difficulty/status); each of
        `zero_keys` (a group) appears with an explicit 0 when nothing fell into it."""
        self._keys.update(f"{stage}/by/{k}" for k in zero_keys)
        self._add(pcoll, f"Count_{stage}_by", lambda r, s=stage, g=group: (f"{s}/by/{g(r)}",))

    def count_stage(
        self, stage: str, inputs: beam.PCollection, outputs: StageOutputs, fan_out: int = 1
    ) -> None:
        """in/out/rejected/errors of a stage. With `fan_out` n, each input and each dead
        letter stands for the n records the input would have produced."""
        self.count(inputs, stage, "in", fan_out)
        self.count(outputs.main, stage, "out")
        self.count_rejections(outputs.rejected, stage)
        self.count(outputs.errors, stage, "errors", fan_out)

    def write(self, pipeline: beam.Pipeline, path_prefix: str) -> None:
        if not self._parts:
            return
        zeros = pipeline | "CountKeys" >> beam.Create([(key, 0) for key in sorted(self._keys)])
        (
            [zeros, *self._parts]
            | "FlattenCounts" >> beam.Flatten()
            | "SumCounts" >> beam.CombinePerKey(sum)
            | "CountsToJson" >> beam.Map(lambda kv: json.dumps({"key": kv[0], "count": kv[1]}))
            | "WriteCounts"
            >> beam.io.WriteToText(path_prefix, file_name_suffix=".jsonl", num_shards=1)
        )


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

    def __init__(self, out_dir: str, stage: str, num_shards: int = 0, write_main: bool = True):
        super().__init__()
        self.out_dir = out_dir.rstrip("/")
        self.stage = stage
        self.num_shards = num_shards
        self.write_main = write_main

    def expand(self, outputs: tuple) -> None:  # type: ignore[override]
        main, rejected, errors = outputs  # Beam may hand the NamedTuple over as a plain tuple
        if self.write_main:
            main | "WriteMain" >> WriteJsonl(f"{self.out_dir}/{self.stage}", self.num_shards)
        # Side outputs are sharded like the main one: one shard would put a whole run's
        # rejections on one worker.
        rejected | "WriteRejected" >> WriteJsonl(
            f"{self.out_dir}/rejected/{self.stage}", self.num_shards
        )
        errors | "WriteErrors" >> WriteJsonl(f"{self.out_dir}/errors/{self.stage}", self.num_shards)
