"""NearDedup: any record with an `id` -> the same records, duplicates rejected.

NearDedup (method.md §1 seeds at 0.5, §4 final pairs at 0.7): MinHash LSH on word 5-gram
shingles, clusters as connected components of band collisions, the member with the smallest
id kept. Given several texts (field names or picklable functions), it runs one pass per text in
sequence, each pass on the previous pass's survivors. Per pass:

1. `Shingle`: each record's text -> its shingle hashes. A text with fewer than `ngram` tokens is
   not deduplicated: the record passes through untouched and is counted as
   `too_short_for_dedup`. A record whose text cannot be read becomes a dead letter.
2. `Sign` (in batches, vectorised): signatures -> band entries (band values, id), gathered per
   band group (band index x `band_shards` slices of the band's first value; every LSH bucket
   lies inside one group). One element per (batch, group) goes through `GroupBands`, not one
   per (document, band): the shuffle moves the same bytes in far fewer elements.
3. `BucketEdges`: inside each group, each bucket of two or more ids -> an edge from each
   member to the bucket's smallest id (a star: size - 1 edges, not all pairs). A group holds
   about documents / band_shards entries: raise `band_shards` beyond some 50 million documents.
4. `Components`: connected components without gathering the graph: alternating large-star
   and small-star rounds (Kiveris et al., "Connected Components in MapReduce and Beyond",
   2014), each a GroupByKey. Every round counts the nodes that are not yet settled (a node
   with a smaller neighbour that also has a larger one or a second smaller one); once a round
   counts none, the graph is a set of stars around each component's smallest id and the
   remaining rounds receive nothing. A Beam graph is fixed before it runs, so `max_rounds`
   rounds (default 6) are unrolled; whatever is still unsettled after them is finished in one
   step (`Finish`): a node whose only neighbour is smaller (a leaf) is resolved by a join on
   that neighbour, the other nodes' edges go to one worker, whose union-find gives each its
   component's smallest id. The result is the same for any `max_rounds`; the rounds that
   received edges are counted as `components_rounds` and the nodes the one worker held as
   `components_leftover_nodes` (both logged).
5. `Decide`: records joined with their component's smallest id (CoGroupByKey by id): the
   smallest id is kept, every other member becomes Rejection(reason="near_duplicate",
   detail=<kept id>). Records that share one id are one node: one copy is kept (the smallest
   JSON), the others are rejected with the same id as detail.

Every step is a function of grouped sets and minima, so the kept set is the same on any runner,
worker count and bundle split.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from enum import StrEnum
from typing import Any, cast

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from beam_pipeline.core.lsh import band_groups, optimal_params, star_edges, union_find_roots
from beam_pipeline.core.minhash import SCHEMES, MinHasher
from beam_pipeline.records import Record, Rejection
from beam_pipeline.stages.common import (
    ERRORS,
    MAIN,
    METRICS_NAMESPACE,
    REJECTED,
    Accounting,
    StageFn,
    StageOutputs,
    merge_outputs,
)

LOG = logging.getLogger(__name__)

TextGetter = str | Callable[[Any], str | None]


class DedupReason(StrEnum):
    NEAR_DUPLICATE = "near_duplicate"


TOO_SHORT = "too_short_for_dedup"
ROUNDS = "components_rounds"
LEFTOVER = "components_leftover_nodes"

_SHORT = "short"
_STATS = "stats"
_SETTLED = "settled"
_LEAF = "leaf"


def text_of(record: Any, getter: TextGetter) -> str:
    """The text a getter names: an attribute (field name) or a function's result; None -> ""."""
    value = getter(record) if callable(getter) else getattr(record, getter)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"dedup text {getter_name(getter)!r} is {type(value).__name__}, not str")
    return value


def getter_name(getter: TextGetter) -> str:
    return getter if isinstance(getter, str) else getattr(getter, "__name__", "text")


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", name))


# ---------------------------------------------------------------------------------------------
# NearDedup steps


class ShingleFn(StageFn):
    """record -> (id, record, shingle hashes), or the record on `short` when too short."""

    def __init__(self, stage: str, getter: TextGetter, hasher: MinHasher) -> None:
        super().__init__(stage)
        self.getter = getter
        self.hasher = hasher
        self._short = Metrics.counter(METRICS_NAMESPACE, f"{stage}_{TOO_SHORT}")

    def handle(self, record: Record) -> Iterator[Any]:
        hashes = self.hasher.hashes(text_of(record, self.getter))
        if hashes is None:
            self._short.inc()
            yield beam.pvalue.TaggedOutput(_SHORT, record)
            return
        yield record.id, record, hashes


class SignFn(beam.DoFn):
    """A batch of (id, shingle hashes) -> (band group, [(band values, id), ...]) per group."""

    def __init__(self, hasher: MinHasher, bands: int, rows: int, shards: int) -> None:
        self.hasher = hasher
        self.bands = bands
        self.rows = rows
        self.shards = shards

    def process(
        self, batch: Sequence[tuple[str, np.ndarray]]
    ) -> Iterator[tuple[int, list[tuple[bytes, str]]]]:
        signatures = self.hasher.signatures_from_hashes([h for _, h in batch])
        ids = [doc_id for doc_id, _ in batch]
        yield from band_groups(signatures, ids, self.bands, self.rows, self.shards).items()


def bucket_edges(group: tuple[int, Iterable[list[tuple[bytes, str]]]]) -> Iterator[tuple[str, str]]:
    """A band group -> (member, smallest member) for every other member of each bucket."""
    return star_edges(itertools.chain.from_iterable(group[1]))


def _both_directions(edge: tuple[str, str]) -> Iterator[tuple[str, str]]:
    yield edge
    yield edge[1], edge[0]


class LargeStarFn(beam.DoFn):
    """(u, neighbours) -> (v, min of u's closed neighbourhood) for each neighbour v > u.

    Also emits, per bundle, (nodes seen, nodes not settled) of the *input* graph.
    """

    def start_bundle(self) -> None:
        self._nodes = 0
        self._unsettled = 0

    def process(self, element: tuple[str, Iterable[str]]) -> Iterator[tuple[str, str]]:
        node, neighbours = element
        distinct = set(neighbours)
        distinct.discard(node)
        if not distinct:
            return
        self._nodes += 1
        smallest = min(distinct)
        larger = [v for v in distinct if v > node]
        if smallest < node and (larger or sum(1 for v in distinct if v < node) > 1):
            self._unsettled += 1
        anchor = min(smallest, node)
        for v in larger:
            yield v, anchor

    def finish_bundle(self) -> Iterator[Any]:
        if self._nodes:
            yield beam.pvalue.TaggedOutput(
                _STATS, GlobalWindows.windowed_value((self._nodes, self._unsettled))
            )


def small_star(element: tuple[str, Iterable[str]]) -> Iterator[tuple[str, str]]:
    """(u, its smaller neighbours) -> u and each of them linked to the smallest one."""
    node, smaller = element
    distinct = set(smaller)
    distinct.discard(node)
    if not distinct:
        return
    anchor = min(distinct)
    yield node, anchor
    for v in distinct:
        if v != anchor:
            yield v, anchor


class RouteFn(beam.DoFn):
    """Edges -> main while the round's input had unsettled nodes, else `settled`."""

    def process(self, edge: tuple[str, str], stats: Iterable[tuple[int, int]]) -> Iterator[Any]:
        if any(unsettled for _, unsettled in stats):
            yield edge
        else:
            yield beam.pvalue.TaggedOutput(_SETTLED, edge)


class _StarRound(beam.PTransform):
    """One large-star + small-star round -> (edges, per-bundle stats of its input)."""

    def expand(self, edges: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        large = (
            edges
            | "BothWays" >> beam.FlatMap(_both_directions)
            | "GroupNeighbours" >> beam.GroupByKey()
            | "LargeStar" >> beam.ParDo(LargeStarFn()).with_outputs(_STATS, main=MAIN)
        )
        small = (
            large[MAIN]
            | "GroupSmaller" >> beam.GroupByKey()
            | "SmallStar" >> beam.FlatMap(small_star)
        )
        return small, large[_STATS]


def split_leaves(element: tuple[str, Iterable[str]]) -> Iterator[Any]:
    """(u, neighbours) -> `leaf` (p, u) when u's only neighbour p is smaller; otherwise
    (0, (u, v)) for each smaller neighbour v, all under one key.

    A leaf's neighbour is never a leaf (the leaf is larger than it), so the edges under the key
    join non-leaves only, and every edge between two non-leaves is there once.
    """
    node, neighbours = element
    distinct = set(neighbours)
    distinct.discard(node)
    smaller = [v for v in distinct if v < node]
    if len(distinct) == 1 and smaller:
        yield beam.pvalue.TaggedOutput(_LEAF, (smaller[0], node))
        return
    for v in smaller:
        yield 0, (node, v)


class UnionFindFn(beam.DoFn):
    """All edges of the non-leaf nodes -> (node, smallest node of its component) for each.

    Holds one dict entry per non-leaf node of the components left unsettled.
    """

    def __init__(self, stage: str, max_rounds: int) -> None:
        self.stage = stage
        self.max_rounds = max_rounds

    def process(self, element: tuple[int, Iterable[tuple[str, str]]]) -> Iterator[tuple[str, str]]:
        roots = union_find_roots(element[1])
        Metrics.counter(METRICS_NAMESPACE, f"{self.stage}_{LEFTOVER}").inc(len(roots))
        LOG.info(
            "%s: components not settled after %d rounds; %d nodes finished on one worker",
            self.stage,
            self.max_rounds,
            len(roots),
        )
        yield from roots.items()


def resolve_leaves(element: tuple[str, dict[str, Iterable[str]]]) -> Iterator[tuple[str, str]]:
    """(p, {core: [p's root], leaves: [...]}) -> (node, root) for p and each leaf of p.

    A node outside the union-find that has leaves has only larger neighbours, all leaves: the
    centre of a settled star, its own root.
    """
    node, grouped = element
    roots = list(grouped["core"])
    root = roots[0] if roots else node
    if root != node:
        yield node, root
    for leaf in grouped["leaves"]:
        yield leaf, root


class _FinishComponents(beam.PTransform):
    """Edges of a graph not yet settled -> (node, component's smallest node) for each other node.

    Only the non-leaf nodes meet on one worker; leaves are resolved by a distributed join.
    Returns (edges, the (node, root) pairs the one worker produced).
    """

    def __init__(self, stage: str, max_rounds: int) -> None:
        super().__init__()
        self.stage = stage
        self.max_rounds = max_rounds

    def expand(self, edges: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        split = (
            edges
            | "BothWays" >> beam.FlatMap(_both_directions)
            | "GroupNeighbours" >> beam.GroupByKey()
            | "SplitLeaves" >> beam.FlatMap(split_leaves).with_outputs(_LEAF, main=MAIN)
        )
        core = (
            split[MAIN]
            | "OneGroup" >> beam.GroupByKey()
            | "UnionFind" >> beam.ParDo(UnionFindFn(self.stage, self.max_rounds))
        )
        finished = (
            {"core": core, "leaves": split[_LEAF]}
            | "JoinLeaves" >> beam.CoGroupByKey()
            | "ResolveLeaves" >> beam.FlatMap(resolve_leaves)
        )
        return finished, core


class _ConnectedComponents(beam.PTransform):
    """(node, smaller node) edges -> (node, component's smallest node) for every other node.

    Returns (edges, one element per round that received edges, the nodes finished on one
    worker).
    """

    def __init__(self, stage: str, max_rounds: int) -> None:
        super().__init__()
        self.stage = stage
        self.max_rounds = max_rounds

    def expand(
        self, edges: beam.PCollection
    ) -> tuple[beam.PCollection, beam.PCollection, beam.PCollection]:
        settled: list[beam.PCollection] = []
        ran: list[beam.PCollection] = []
        for number in range(1, self.max_rounds + 1):
            # Beam types a composite's result as PValue; _StarRound returns two PCollections.
            edges, stats = cast(
                tuple[beam.PCollection, beam.PCollection], edges | f"Round{number}" >> _StarRound()
            )
            # A round whose input had no unsettled node changed nothing: its edges are the
            # final stars and skip the remaining rounds, which then receive nothing.
            routed = edges | f"Route{number}" >> beam.ParDo(
                RouteFn(), beam.pvalue.AsIter(stats)
            ).with_outputs(_SETTLED, main=MAIN)
            settled.append(routed[_SETTLED])
            ran.append(stats | f"Ran{number}" >> beam.Map(lambda _, n=number: n))
            edges = routed[MAIN]
        # Still routed to main after the last round only if that round's input was unsettled.
        finished, leftover = cast(
            tuple[beam.PCollection, beam.PCollection],
            edges | "Finish" >> _FinishComponents(self.stage, self.max_rounds),
        )
        rounds = (
            ran
            | "FlattenRan" >> beam.Flatten()
            | "DistinctRounds" >> beam.Distinct()
            | "ReportRound" >> beam.Map(_report_round, self.stage)
        )
        return ([*settled, finished]) | "AllEdges" >> beam.Flatten(), rounds, leftover


def _report_round(number: int, stage: str) -> int:
    Metrics.counter(METRICS_NAMESPACE, f"{stage}_{ROUNDS}").inc()
    LOG.info("%s: connected components: star round %d received edges", stage, number)
    return number


class DecideFn(StageFn):
    """(id, {records, roots}) -> the record, or Rejection(near_duplicate, detail=kept id)."""

    def handle(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        node, grouped = element
        records = list(grouped["records"])
        roots = set(grouped["roots"])
        if not records:
            return
        if roots:
            kept_id = min(roots)
            for record in records:
                yield Rejection.of(self.stage, DedupReason.NEAR_DUPLICATE, record, kept_id)
            return
        if len(records) > 1:
            records.sort(key=lambda r: r.to_json())
        yield records[0]
        for record in records[1:]:
            yield Rejection.of(self.stage, DedupReason.NEAR_DUPLICATE, record, node)


class _NearDedupPass(beam.PTransform):
    def __init__(
        self,
        stage: str,
        getter: TextGetter,
        hasher: MinHasher,
        bands: int,
        rows: int,
        max_rounds: int,
        batch_size: int,
        band_shards: int,
        accounting: Accounting | None,
    ) -> None:
        super().__init__()
        self.stage = stage
        self.getter = getter
        self.hasher = hasher
        self.bands = bands
        self.rows = rows
        self.max_rounds = max_rounds
        self.batch_size = batch_size
        self.band_shards = band_shards
        self.accounting = accounting

    def expand(self, records: beam.PCollection) -> StageOutputs:
        shingled = records | "Shingle" >> beam.ParDo(
            ShingleFn(self.stage, self.getter, self.hasher)
        ).with_outputs(_SHORT, REJECTED, ERRORS, main=MAIN)
        keyed = shingled[MAIN] | "KeyById" >> beam.Map(lambda t: (t[0], t[1]))
        edges = (
            shingled[MAIN]
            | "Hashes" >> beam.Map(lambda t: (t[0], t[2]))
            | "Batch"
            >> beam.BatchElements(
                min_batch_size=min(64, self.batch_size), max_batch_size=self.batch_size
            )
            | "Sign" >> beam.ParDo(SignFn(self.hasher, self.bands, self.rows, self.band_shards))
            | "GroupBands" >> beam.GroupByKey()
            | "BucketEdges" >> beam.FlatMap(bucket_edges)
        )
        star_edges, rounds, leftover = edges | "Components" >> _ConnectedComponents(
            self.stage, self.max_rounds
        )
        decided = {"records": keyed, "roots": star_edges} | "Join" >> beam.CoGroupByKey()
        results = decided | "Decide" >> beam.ParDo(DecideFn(self.stage)).with_outputs(
            REJECTED, ERRORS, main=MAIN
        )
        main = (results[MAIN], shingled[_SHORT]) | "WithShort" >> beam.Flatten()
        rejected = (shingled[REJECTED], results[REJECTED]) | "Rejected" >> beam.Flatten()
        errors = (shingled[ERRORS], results[ERRORS]) | "Errors" >> beam.Flatten()
        outputs = StageOutputs(main, rejected, errors)
        if self.accounting is not None:
            self.accounting.count_stage(self.stage, records, outputs)
            self.accounting.count(shingled[_SHORT], self.stage, TOO_SHORT)
            self.accounting.count(rounds, self.stage, ROUNDS)
            self.accounting.count(leftover, self.stage, LEFTOVER)
        return outputs


class NearDedup(beam.PTransform):
    """MinHash LSH near-dedup of records on one text, or on several texts in sequence.

    `text`: a field name, a picklable function record -> str, or a sequence of them (one pass
    each, in order). `threshold`: Jaccard similarity; bands and rows come from it as datasketch
    derives them unless `bands_rows` is given. Accounting keys: `stage` (one text) or
    `stage.<text name>` (several), each with in/out/rejected/errors and `too_short_for_dedup`.
    """

    def __init__(
        self,
        stage: str,
        text: TextGetter | Sequence[TextGetter],
        threshold: float = 0.7,
        num_perm: int = 250,
        *,
        seed: int = 1,
        ngram: int = 5,
        scheme: str = "affine32",
        bands_rows: tuple[int, int] | None = None,
        max_rounds: int = 6,
        batch_size: int = 1024,
        band_shards: int = 64,
        accounting: Accounting | None = None,
    ) -> None:
        super().__init__()
        getters = [text] if isinstance(text, str) or callable(text) else list(text)
        if not getters:
            raise ValueError("NearDedup needs at least one text field or function")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"dedup threshold must be in (0, 1), got {threshold}")
        if scheme not in SCHEMES:
            raise ValueError(f"unknown MinHash scheme {scheme!r}; expected one of {SCHEMES}")
        if max_rounds < 1 or batch_size < 1 or band_shards < 1:
            raise ValueError("max_rounds, batch_size and band_shards must be positive")
        self.stage = stage
        self.getters = getters
        self.hasher = MinHasher(num_perm=num_perm, seed=seed, ngram=ngram, scheme=scheme)
        self.bands, self.rows = bands_rows or optimal_params(threshold, num_perm)
        if self.bands * self.rows > num_perm:
            raise ValueError(
                f"{self.bands} bands x {self.rows} rows exceed {num_perm} permutations"
            )
        self.max_rounds = max_rounds
        self.batch_size = batch_size
        self.band_shards = band_shards
        self.accounting = accounting

    def expand(self, records: beam.PCollection) -> StageOutputs:
        passes = []
        current = records
        for index, getter in enumerate(self.getters, 1):
            name = getter_name(getter)
            stage = self.stage if len(self.getters) == 1 else f"{self.stage}.{name}"
            outputs = current | f"Pass{index}{_camel(name)}" >> _NearDedupPass(
                stage,
                getter,
                self.hasher,
                self.bands,
                self.rows,
                self.max_rounds,
                self.batch_size,
                self.band_shards,
                self.accounting,
            )
            passes.append(outputs)
            current = outputs.main
        return merge_outputs("NearDedup", *passes)
