"""LSH parameters and band keys, against datasketch's MinHashLSH; union-find components."""

from __future__ import annotations

import collections
import itertools
import random

import datasketch
import numpy as np
import pytest
from datasketch.lsh import _optimal_param

from beam_pipeline.core.lsh import (
    band_groups,
    band_keys,
    collision_probability,
    optimal_params,
    star_edges,
    union_find_roots,
)
from beam_pipeline.core.minhash import MinHasher, shingles


def test_method_parameters() -> None:
    assert optimal_params(0.7, 250) == (25, 10)
    assert optimal_params(0.5, 250) == (41, 6)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.85, 0.9])
@pytest.mark.parametrize("num_perm", [32, 128, 250])
def test_optimal_params_equal_datasketch(threshold: float, num_perm: int) -> None:
    assert optimal_params(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)


def test_weights_shift_the_optimum_like_datasketch() -> None:
    ours = optimal_params(0.7, 128, (0.2, 0.8))
    assert ours == _optimal_param(0.7, 128, 0.2, 0.8)
    assert ours != optimal_params(0.7, 128)


@pytest.mark.parametrize("bad", [(0.0, 250), (1.0, 250), (0.7, 1)])
def test_invalid_parameters(bad: tuple[float, int]) -> None:
    with pytest.raises(ValueError):
        optimal_params(*bad)


def test_collision_probability_is_an_s_curve_around_the_threshold() -> None:
    bands, rows = optimal_params(0.7, 250)
    assert collision_probability(0.5, bands, rows) < 0.03
    assert 0.3 < collision_probability(0.7, bands, rows) < 0.9
    assert collision_probability(0.85, bands, rows) > 0.99


def test_band_keys_layout() -> None:
    signatures = np.arange(24, dtype=np.uint32).reshape(2, 12)
    keys = band_keys(signatures, bands=2, rows=5)
    assert len(keys) == 2 and all(len(k) == 2 for k in keys)
    assert keys[0][0] == b"\x00\x00" + np.arange(5, dtype="<u4").tobytes()
    assert keys[1][1] == b"\x00\x01" + np.arange(17, 22, dtype="<u4").tobytes()
    # Equal values in different bands are different keys.
    same = np.zeros((1, 10), dtype=np.uint32)
    assert len(set(band_keys(same, 2, 5)[0])) == 2
    with pytest.raises(ValueError):
        band_keys(signatures, bands=3, rows=5)


def _corpus(seed: int = 11) -> list[str]:
    """Near-duplicate families: each variant edits a few words of its family's base."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(400)]
    texts = []
    for _ in range(40):
        base = [rng.choice(vocab) for _ in range(150)]
        texts.append(" ".join(base))
        for _ in range(rng.randint(0, 4)):
            variant = list(base)
            for _ in range(rng.randint(1, 6)):
                variant[rng.randrange(len(variant))] = rng.choice(vocab)
            texts.append(" ".join(variant))
    return texts


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_band_collisions_equal_datasketch_lsh_candidates(threshold: float) -> None:
    texts = _corpus()
    bands, rows = optimal_params(threshold, 250)
    signatures, _ = MinHasher().signatures(texts)
    buckets = collections.defaultdict(set)
    for index, keys in enumerate(band_keys(signatures, bands, rows)):
        for key in keys:
            buckets[key].add(index)
    ours = {
        pair for members in buckets.values() for pair in itertools.combinations(sorted(members), 2)
    }

    lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=250)
    assert (lsh.b, lsh.r) == (bands, rows)
    sketches = []
    for index, text in enumerate(texts):
        sketch = datasketch.MinHash(num_perm=250)
        sketch.update_batch(list(shingles(text)))
        sketches.append(sketch)
        lsh.insert(index, sketch)
    theirs = {
        tuple(sorted((index, other)))
        for index, sketch in enumerate(sketches)
        for other in lsh.query(sketch)
        if other != index
    }
    assert len(ours) > 40
    assert ours == theirs


@pytest.mark.parametrize("shards", [1, 7, 64])
def test_band_groups_find_the_same_buckets_as_band_keys(shards: int) -> None:
    texts = _corpus()
    ids = [f"d{i:04d}" for i in range(len(texts))]
    bands, rows = optimal_params(0.7, 250)
    signatures, _ = MinHasher().signatures(texts)
    by_key = collections.defaultdict(set)
    for doc_id, keys in zip(ids, band_keys(signatures, bands, rows), strict=True):
        for key in keys:
            by_key[key].add(doc_id)
    expected = {
        (member, min(members))
        for members in by_key.values()
        for member in members
        if member != min(members)
    }
    # Split the corpus into two "batches" as the Beam stage would.
    grouped = collections.defaultdict(list)
    for start in (0, len(ids) // 2):
        end = len(ids) // 2 if start == 0 else len(ids)
        batch = band_groups(signatures[start:end], ids[start:end], bands, rows, shards)
        for group, entries in batch.items():
            assert 0 <= group < bands * shards
            grouped[group].extend(entries)
    edges = [edge for entries in grouped.values() for edge in star_edges(entries)]
    assert len(expected) > 40
    assert set(edges) == expected


def test_star_edges_link_every_member_to_the_smallest() -> None:
    entries = [(b"v1", "c"), (b"v1", "a"), (b"v1", "b"), (b"v1", "a"), (b"v2", "z"), (b"v3", "q")]
    entries += [(b"v3", "p")]
    assert sorted(star_edges(entries)) == [("b", "a"), ("c", "a"), ("q", "p")]


def _components_by_search(edges: list[tuple[str, str]]) -> dict[str, str]:
    """node -> smallest node reachable from it, by breadth-first search."""
    neighbours = collections.defaultdict(set)
    for u, v in edges:
        neighbours[u].add(v)
        neighbours[v].add(u)
    roots: dict[str, str] = {}
    for start in neighbours:
        if start in roots:
            continue
        seen, frontier = {start}, [start]
        while frontier:
            frontier = [w for x in frontier for w in neighbours[x] if w not in seen]
            seen.update(frontier)
        for node in seen:
            roots[node] = min(seen)
    return roots


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_union_find_roots_are_each_components_smallest_node(seed: int) -> None:
    rng = random.Random(seed)
    nodes = [f"n{rng.randrange(10**6):06d}" for _ in range(600)]
    edges = [(rng.choice(nodes), rng.choice(nodes)) for _ in range(300)]
    path = rng.sample(nodes, 200)  # a long chain in random id order
    edges += list(itertools.pairwise(path))
    rng.shuffle(edges)
    expected = _components_by_search(edges)
    assert len(set(expected.values())) > 10
    assert union_find_roots(edges) == expected
    assert union_find_roots(reversed(edges)) == expected
    assert union_find_roots([("b", "b")]) == {"b": "b"}
    assert union_find_roots([]) == {}
