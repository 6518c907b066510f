"""MinHash signatures: shingling, equality with datasketch, and estimation accuracy."""

from __future__ import annotations

import inspect
import json
import random

import datasketch
import numpy as np
import pytest

from beam_pipeline.core import minhash
from beam_pipeline.core.minhash import (
    MinHasher,
    jaccard,
    permutations,
    shingle_hashes,
    shingles,
    tokenize,
    true_jaccard,
)


def _code_texts() -> list[str]:
    """Real Python source cut into function-sized pieces (stdlib modules)."""
    texts = []
    for module in (json.decoder, json.encoder, inspect, random):
        lines = inspect.getsource(module).splitlines()
        texts.extend("\n".join(lines[i : i + 25]) for i in range(0, len(lines), 25))
    return texts


def _random_texts(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    words = ["foo", "Bar", "BAZ", "qux_1", "ünïcode", "x", "_y", "a-b", "c.d", "9", "Ωmega", "e"]
    seps = [" ", "  ", "\n", "\t", "(", ")", ", ", "::", "->", ""]
    return [
        "".join(rng.choice(words) + rng.choice(seps) for _ in range(rng.randint(0, 80)))
        for _ in range(count)
    ]


TEXTS = _code_texts() + _random_texts(250)


def _datasketch(text: str, num_perm: int, seed: int, scheme: str, batch: bool = True) -> np.ndarray:
    sketch = datasketch.MinHash(num_perm=num_perm, seed=seed, scheme=scheme)
    grams = sorted(shingles(text))
    if batch:
        sketch.update_batch(grams)
    else:
        for gram in grams:
            sketch.update(gram)
    return sketch.hashvalues.astype(np.uint64)


def test_tokenize_lowercases_and_splits_on_non_word_characters() -> None:
    assert tokenize("Foo_bar(x)+BAZ9  ünï--Ωmega") == ["foo_bar", "x", "baz9", "ünï", "ωmega"]
    assert tokenize("  ...  ") == []


def test_shingles_are_space_joined_word_5_grams() -> None:
    assert shingles("A b,c;d(e)") == {b"a b c d e"}
    assert shingles("a b c d e f") == {b"a b c d e", b"b c d e f"}
    assert shingles("a b c d") == set()
    assert shingles("x x x x x x x") == {b"x x x x x"}
    assert shingles("Ünï b c d e") == {"ünï b c d e".encode()}


def test_short_texts_have_no_hashes_and_are_flagged() -> None:
    hasher = MinHasher()
    signatures, too_short = hasher.signatures(["one two three four", "", "a b c d e"])
    assert too_short.tolist() == [True, True, False]
    assert (signatures[0] == 0xFFFFFFFF).all()
    assert shingle_hashes("one two three four") is None


def test_shingle_hashes_are_datasketch_sha1_hash32() -> None:
    text = TEXTS[3]
    expected = sorted(datasketch.hashfunc.sha1_hash32(g) for g in shingles(text))
    assert shingle_hashes(text).tolist() == expected


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_permutations_are_datasketch_permutations(scheme: str) -> None:
    ours = permutations(250, 1, scheme)
    theirs = datasketch.MinHash(num_perm=250, seed=1, scheme=scheme).permutations
    assert np.array_equal(ours[0], np.asarray(theirs[0]))
    assert np.array_equal(ours[1], np.asarray(theirs[1]))


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
@pytest.mark.parametrize(("num_perm", "seed"), [(250, 1), (128, 42), (9, 1234)])
def test_signatures_equal_datasketch_on_many_texts(scheme: str, num_perm: int, seed: int) -> None:
    hasher = MinHasher(num_perm=num_perm, seed=seed, scheme=scheme)
    signatures, too_short = hasher.signatures(TEXTS)
    assert len(TEXTS) > 300 and too_short.sum() > 5 and (~too_short).sum() > 250
    for text, signature in zip(TEXTS, signatures, strict=True):
        assert np.array_equal(
            signature.astype(np.uint64), _datasketch(text, num_perm, seed, scheme)
        )


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_signatures_equal_datasketch_update_per_shingle(scheme: str) -> None:
    signatures, _ = MinHasher(scheme=scheme).signatures(TEXTS[:40])
    for text, signature in zip(TEXTS[:40], signatures, strict=True):
        expected = _datasketch(text, 250, 1, scheme, batch=False)
        assert np.array_equal(signature.astype(np.uint64), expected)


def test_default_is_datasketch_default() -> None:
    text = TEXTS[0]
    sketch = datasketch.MinHash(num_perm=250)
    sketch.update_batch(list(shingles(text)))
    assert np.array_equal(MinHasher().signatures([text])[0][0], sketch.hashvalues)


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_batching_and_chunking_do_not_change_signatures(
    monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    hasher = MinHasher(num_perm=64, scheme=scheme)
    whole, _ = hasher.signatures(TEXTS)
    one_by_one = np.vstack([hasher.signatures([t])[0] for t in TEXTS])
    # Chunks smaller than one document split documents across chunks.
    monkeypatch.setattr(minhash, "CHUNK_ROWS", 7)
    chunked, _ = hasher.signatures(TEXTS)
    assert np.array_equal(whole, one_by_one)
    assert np.array_equal(whole, chunked)


def test_empty_batch() -> None:
    signatures, too_short = MinHasher(num_perm=16).signatures([])
    assert signatures.shape == (0, 16) and too_short.shape == (0,)


def _pair_at(similarity: float, tag: str, length: int = 160) -> tuple[str, str]:
    """Two texts of unique tokens sharing a prefix sized so their shingle Jaccard ~ similarity."""
    grams = length - 4
    shared = round(2 * grams * similarity / (1 + similarity))
    prefix = [f"{tag}p{i}" for i in range(shared + 4)]
    own = length - len(prefix)
    return (
        " ".join(prefix + [f"{tag}a{i}" for i in range(own)]),
        " ".join(prefix + [f"{tag}b{i}" for i in range(own)]),
    )


def test_estimated_jaccard_is_within_tolerance() -> None:
    rng = random.Random(3)
    hasher = MinHasher()
    errors = []
    for index in range(120):
        target = rng.uniform(0.05, 0.95)
        text_a, text_b = _pair_at(target, f"d{index}")
        truth = true_jaccard(text_a, text_b)
        assert abs(truth - target) < 0.02
        signatures, _ = hasher.signatures([text_a, text_b])
        errors.append(jaccard(signatures[0], signatures[1]) - truth)
    errors_arr = np.array(errors)
    # 250 permutations: standard error at most sqrt(0.25 / 250) = 0.032.
    assert np.abs(errors_arr).max() < 0.13
    assert np.abs(errors_arr).mean() < 0.035
    assert abs(errors_arr.mean()) < 0.012  # unbiased


def test_identical_and_disjoint_texts() -> None:
    text = TEXTS[5]
    other = " ".join(f"zz{i}" for i in range(50))
    signatures, _ = MinHasher().signatures([text, text.upper(), other])
    assert jaccard(signatures[0], signatures[1]) == 1.0
    assert jaccard(signatures[0], signatures[2]) < 0.05


@pytest.mark.parametrize(
    "kwargs", [{"num_perm": 0}, {"ngram": 0}, {"scheme": "affine64"}, {"scheme": "nope"}]
)
def test_invalid_hasher_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        MinHasher(**kwargs)
