"""LSH banding of MinHash signatures: parameters from a Jaccard threshold, and band keys.

`optimal_params` is datasketch's `MinHashLSH` optimisation: a grid search over every (bands,
rows) with bands * rows <= num_perm that minimises the equally weighted sum of the false
positive area (collision probability integrated below the threshold) and the false negative
area (non-collision probability integrated above it). 0.7 at 250 permutations gives 25 bands
of 10 rows, 0.5 gives 41 x 6.

Two documents are candidates when any band key is equal. A key is the band index followed by
the band's signature values as little-endian uint32 bytes: exact, not a hash of them, so
collisions are exactly datasketch's bucket collisions.

For a distributed grouping, `band_groups` spreads band entries over `bands * shards` groups
(band index, and the band's first value modulo `shards`): every bucket lies inside one group,
so grouping by group and then by band value inside it finds exactly the same buckets while
moving one element per (batch, group) through the shuffle instead of one per (document, band).

`union_find_roots` is the one place components are computed on a single machine: the near-dedup
stage gives it only what its distributed rounds left unsettled.
"""

from __future__ import annotations

import collections
import functools
import struct
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from scipy.integrate import quad


def _false_positive_area(threshold: float, bands: int, rows: int) -> float:
    area, _ = quad(lambda s: 1 - (1 - s ** float(rows)) ** float(bands), 0.0, threshold)
    return area


def _false_negative_area(threshold: float, bands: int, rows: int) -> float:
    # Written as datasketch writes it (not simplified) so float rounding, and thus the chosen
    # parameters in near-ties, are the same.
    area, _ = quad(lambda s: 1 - (1 - (1 - s ** float(rows)) ** float(bands)), threshold, 1.0)
    return area


@functools.lru_cache(maxsize=64)
def optimal_params(
    threshold: float, num_perm: int, weights: tuple[float, float] = (0.5, 0.5)
) -> tuple[int, int]:
    """(bands, rows) minimising weighted false positive + false negative probability mass."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if num_perm < 2:
        raise ValueError(f"num_perm must be at least 2, got {num_perm}")
    fp_weight, fn_weight = weights
    best_error, best = float("inf"), (0, 0)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            error = fp_weight * _false_positive_area(
                threshold, bands, rows
            ) + fn_weight * _false_negative_area(threshold, bands, rows)
            if error < best_error:
                best_error, best = error, (bands, rows)
    return best


def collision_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that two documents at this Jaccard similarity share at least one band."""
    return 1.0 - (1.0 - similarity**rows) ** bands


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> list[list[bytes]]:
    """Per document, its `bands` keys: 2-byte band index + the band's values as bytes."""
    n, num_perm = signatures.shape
    if bands * rows > num_perm:
        raise ValueError(f"{bands} bands x {rows} rows need {bands * rows} > {num_perm} values")
    banded = np.ascontiguousarray(
        signatures[:, : bands * rows].astype("<u4", copy=False).reshape(n, bands, rows)
    )
    width = 4 * rows
    prefixes = [struct.pack(">H", band) for band in range(bands)]
    keys: list[list[bytes]] = []
    for row in banded:
        raw = row.tobytes()
        keys.append([prefixes[i] + raw[i * width : (i + 1) * width] for i in range(bands)])
    return keys


def band_groups(
    signatures: np.ndarray, ids: Sequence[str], bands: int, rows: int, shards: int
) -> dict[int, list[tuple[bytes, str]]]:
    """group -> [(band values as bytes, id)] for every band of every document.

    group = band * shards + (band's first value mod shards): deterministic on any machine.
    """
    n, num_perm = signatures.shape
    if bands * rows > num_perm:
        raise ValueError(f"{bands} bands x {rows} rows need {bands * rows} > {num_perm} values")
    if shards < 1:
        raise ValueError(f"shards must be positive, got {shards}")
    banded = np.ascontiguousarray(
        signatures[:, : bands * rows].astype("<u4", copy=False).reshape(n, bands, rows)
    )
    values = banded.view(f"V{4 * rows}").reshape(n, bands).tolist()  # one bytes object each
    groups_of = (banded[:, :, 0] % shards + np.arange(bands) * shards).tolist()
    grouped: dict[int, list[tuple[bytes, str]]] = collections.defaultdict(list)
    for doc_id, doc_values, doc_groups in zip(ids, values, groups_of, strict=True):
        for value, group in zip(doc_values, doc_groups, strict=True):
            grouped[group].append((value, doc_id))
    return dict(grouped)


def star_edges(entries: Iterable[tuple[bytes, str]]) -> Iterator[tuple[str, str]]:
    """Band entries of one group -> (member, smallest member) for every bucket of 2+ ids."""
    buckets: dict[bytes, set[str]] = collections.defaultdict(set)
    for value, doc_id in entries:
        buckets[value].add(doc_id)
    for members in buckets.values():
        if len(members) > 1:
            ordered = sorted(members)
            for member in ordered[1:]:
                yield member, ordered[0]


def union_find_roots(edges: Iterable[tuple[str, str]]) -> dict[str, str]:
    """node -> smallest node of its component, for every node of the edges.

    Holds one entry per node; path compression keeps the finds short without ranks, and the
    smaller root always wins, so the result does not depend on the order of the edges.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for u, v in edges:
        parent.setdefault(u, u)
        parent.setdefault(v, v)
        ru, rv = find(u), find(v)
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    return {node: find(node) for node in parent}
