"""MinHash signatures: shingling, equality with datasketch, and estimation accuracy."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import string
import subprocess
import sys
from typing import Any

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

# Unicode case and word-character rules the compiled path leaves to Python: ß, dotted capital I
# (lower-cases to i + a combining dot, which is not a word character), title-case digraphs,
# final sigma, ligatures, superscripts, other scripts' digits, the Kelvin sign (lower-cases
# to ASCII k), combining accents, CJK, emoji and zero-width or non-breaking separators.
UNICODE_WORDS = [
    "Straße", "İstanbul", "ǅemal", "ΟΔΟΣ", "ﬁle", "x²", "Ⅻ", "٣", "\u212a", "e\u0301",
    "日本語", "コード", "😀", "naïve", "ÀB", "Ωmega", "\u200bzw", "a\u00a0b", "—", "Ǆ",
]  # fmt: skip
ASCII_WORDS = ["foo", "Bar", "BAZ", "qux_1", "x", "_y", "a-b", "c.d", "9", "e", "Z9_z", "i"]
SEPARATORS = [" ", "  ", "\n", "\t", "(", ")", ", ", "::", "->", "", "\r\n", " # "]


def _long_word(rng: random.Random) -> str:
    """A 20-70 character identifier: shingles with a few of them span two or more SHA-1 blocks."""
    return "".join(rng.choices(string.ascii_letters + string.digits + "_", k=rng.randint(20, 70)))


def _mixed_texts(count: int, seed: int) -> list[str]:
    """Random texts: ASCII only, with non-ASCII words, and with very long tokens."""
    rng = random.Random(seed)
    texts = []
    for index in range(count):
        words = ASCII_WORDS + (UNICODE_WORDS if index % 3 else [])
        parts = []
        for _ in range(rng.randint(0, 60)):
            parts.append(_long_word(rng) if rng.random() < 0.08 else rng.choice(words))
            parts.append(rng.choice(SEPARATORS))
        texts.append("".join(parts))
    return texts


# Every non-word character ends a token, so n separators make n + 1 tokens, empty ones
# included; fewer than 5 tokens is too short. The first eight alternate short / not short.
EDGE_TEXTS = [
    "",  # one empty token
    "one two three four five",  # exactly one shingle
    "one two three four",
    "ONE,two;THREE(four)five!",  # six tokens, the last one empty
    "(((",  # four empty tokens
    "((((",  # five empty tokens: one shingle of four spaces
    "Straße İ",  # straße, "", i, "": the combining dot of the lower-cased İ separates
    "😀😀😀😀",  # emoji are separators: five empty tokens
    # Shingle sizes around SHA-1 block boundaries: up to 55 bytes fit one 64-byte block with the
    # padding, 56-119 take two, 120 takes three.
    " ".join("x" * n for n in (10, 10, 10, 10, 11, 11)),  # 55 and 56 bytes
    " ".join(f"{i:02d}" * 6 for i in range(5)),  # 64 bytes
    " ".join("é" * 6 for _ in range(5)),  # 64 bytes of UTF-8
    " ".join("w" * n for n in (23, 23, 23, 23, 23, 24)),  # 119 and 120 bytes
    "a " * 40,  # two shingles repeated
    "   ...  \n",
    "Straße İ ΟΔΟΣ 日本語 x²",
    "İ İ İ İ",
    "def f(a, b):\n\treturn a\u00a0+ b  # naïve\u200b",
]


def _datasketch(text: str, num_perm: int, seed: int, scheme: str, batch: bool = True) -> np.ndarray:
    sketch = datasketch.MinHash(num_perm=num_perm, seed=seed, scheme=scheme)
    grams = sorted(_reference_shingles(text))
    if batch:
        sketch.update_batch(grams)
    else:
        for gram in grams:
            sketch.update(gram)
    return sketch.hashvalues.astype(np.uint64)


NUMBA_KERNELS = minhash.kernels


@pytest.fixture
def numba_kernels() -> Any:
    # numba is a core dependency: its absence is a broken install, not a reason to skip
    assert NUMBA_KERNELS is not None, "numba did not import; the compiled path is untested"
    return NUMBA_KERNELS


needs_numba = pytest.mark.usefixtures("numba_kernels")


@pytest.fixture(params=["numba", "numpy"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test on the compiled path and on the numpy fallback."""
    if request.param == "numba":
        monkeypatch.setattr(minhash, "kernels", request.getfixturevalue("numba_kernels"))
    else:
        monkeypatch.setattr(minhash, "kernels", None)
    return request.param


def test_tokenize_splits_at_every_non_word_character_keeping_empty_tokens() -> None:
    assert tokenize("Foo_bar(x)+BAZ9 ünï-Ωmega") == ["foo_bar", "x", "", "baz9", "ünï", "ωmega"]
    assert tokenize("f(a, b)") == ["f", "a", "", "b", ""]
    assert tokenize("  x") == ["", "", "x"]
    assert tokenize("") == [""]
    assert tokenize("  ...  ") == [""] * 8
    # Unicode word characters: letters and digits of any script, superscripts, Roman numerals;
    # combining marks, dashes and emoji separate.
    assert tokenize("Straße—ΟΔΟΣ x² Ⅻ") == ["straße", "οδος", "x²", "ⅻ"]
    assert tokenize("e\u0301 😀x") == ["e", "", "", "x"]
    assert tokenize("İİ") == ["i", "i", ""]
    assert tokenize("a\ud800b") == ["a", "b"]  # a lone surrogate is a separator


def test_shingles_are_5_grams_of_single_character_split_tokens() -> None:
    assert shingles("A b,c;d(e)") == {b"a b c d e", b"b c d e "}
    assert shingles("a b c d e f") == {b"a b c d e", b"b c d e f"}
    assert shingles("f(a, b)") == {b"f a  b "}
    assert shingles("a b c d") == set()
    assert shingles("x x x x x x x") == {b"x x x x x"}
    assert shingles("    x") == {b"    x"}
    assert shingles("Ünï b c d e") == {"ünï b c d e".encode()}
    assert shingles("x\ud800y z w v") == {b"x y z w v"}


def _reference_shingles(text: str, ngram: int = 5) -> set[bytes]:
    """The reference's rule written out character by character: a character is a word
    character when it is alphanumeric or `_` (Python's `\\w`); every other one ends a token.
    The n-grams are lower-cased again after joining, as the reference does."""
    tokens, current = [], []
    for char in text.lower():
        if char.isalnum() or char == "_":
            current.append(char)
        else:
            tokens.append("".join(current))
            current = []
    tokens.append("".join(current))
    if len(tokens) < ngram:
        return set()
    return {
        " ".join(tokens[i : i + ngram]).lower().encode("utf-8")
        for i in range(len(tokens) - ngram + 1)
    }


PROSE = [
    "Write a function that returns the n-th Fibonacci number. It should raise ValueError "
    "for negative n -- and run in O(n) time!",
    "Implement `Stack` with push/pop/peek; each op is O(1).\n\n  - push(x)\n  - pop()",
    "Écrivez une fonction « naïve » qui renvoie la somme; 日本語のテキストも扱う。Ωmega ΟΔΟΣ",
]


def test_shingles_equal_the_reference_rule_on_code_prose_and_unicode() -> None:
    texts = _code_texts() + PROSE + EDGE_TEXTS + _mixed_texts(300, seed=3)
    assert sum(bool(_reference_shingles(t)) for t in texts) > 400
    for text in texts:
        assert shingles(text) == _reference_shingles(text), text


def test_where_separators_fall_counts_not_which_they_are() -> None:
    # Word runs are the same in both; the spacing moves the separators, so the shingles differ.
    spaced, tight = "total = a + b * c - d", "total=a+b*c-d"
    assert true_jaccard(spaced, tight) == 0.0
    # Which non-word character stands at a position does not matter.
    assert true_jaccard("x = f(a, b) + g(c)", "x = f[a, b] + g[c]") == 1.0


@pytest.mark.usefixtures("backend")
def test_short_texts_have_no_hashes_and_are_flagged() -> None:
    hasher = MinHasher()
    signatures, too_short = hasher.signatures(["one two three four", "", "a b c d e"])
    assert too_short.tolist() == [True, True, False]
    assert (signatures[0] == 0xFFFFFFFF).all()
    assert shingle_hashes("one two three four") is None


@pytest.mark.usefixtures("backend")
def test_shingle_hashes_are_datasketch_sha1_hash32() -> None:
    for text in TEXTS[:60] + EDGE_TEXTS + _mixed_texts(60, seed=5):
        expected = sorted(datasketch.hashfunc.sha1_hash32(g) for g in shingles(text))
        hashes = shingle_hashes(text)
        assert (hashes.tolist() if hashes is not None else []) == expected, text


def _colliding_tokens() -> tuple[bytes, bytes]:
    """Two different tokens with the same 32-bit SHA-1 hash (birthday search, ~80k tries)."""
    seen: dict[bytes, bytes] = {}
    for i in range(1_000_000):
        token = f"t{i}".encode()
        key = hashlib.sha1(token).digest()[:4]
        if key in seen:
            return seen[key], token
        seen[key] = token
    raise AssertionError("no collision found")


@pytest.mark.usefixtures("backend")
def test_shingle_hashes_keep_distinct_shingles_with_equal_hashes() -> None:
    first, second = _colliding_tokens()
    value = datasketch.hashfunc.sha1_hash32(first)
    assert datasketch.hashfunc.sha1_hash32(second) == value
    text = f"{first.decode()} {second.decode()} {first.decode()}"
    assert shingle_hashes(text, ngram=1).tolist() == [value, value]
    assert shingle_hashes(f"{first.decode()} {first.decode()}", ngram=1).tolist() == [value]


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_permutations_are_datasketch_permutations(scheme: str) -> None:
    ours = permutations(250, 1, scheme)
    theirs = datasketch.MinHash(num_perm=250, seed=1, scheme=scheme).permutations
    assert np.array_equal(ours[0], np.asarray(theirs[0]))
    assert np.array_equal(ours[1], np.asarray(theirs[1]))


@pytest.mark.usefixtures("backend")
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


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_signatures_equal_datasketch_on_unicode_long_and_edge_texts(scheme: str) -> None:
    texts = EDGE_TEXTS + PROSE + _mixed_texts(300, seed=11)
    lengths = [len(g) for t in texts for g in shingles(t)]
    assert sum(55 < n < 120 for n in lengths) > 50 and sum(n >= 120 for n in lengths) > 10
    signatures, too_short = MinHasher(scheme=scheme).signatures(texts)
    assert too_short[:8].tolist() == [True, False] * 4
    for text, signature, short in zip(texts, signatures, too_short, strict=True):
        assert short == (not shingles(text))
        assert np.array_equal(signature.astype(np.uint64), _datasketch(text, 250, 1, scheme)), text


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_signatures_equal_datasketch_update_per_shingle(scheme: str) -> None:
    signatures, _ = MinHasher(scheme=scheme).signatures(TEXTS[:40])
    for text, signature in zip(TEXTS[:40], signatures, strict=True):
        expected = _datasketch(text, 250, 1, scheme, batch=False)
        assert np.array_equal(signature.astype(np.uint64), expected)


def _repetitive_texts(count: int, seed: int) -> list[str]:
    """Code whose shingles repeat many times: deep indentation, repeated lines and blocks,
    runs of punctuation, shingles differing only in their last byte."""
    rng = random.Random(seed)
    texts = []
    for index in range(count):
        lines = []
        for depth in range(rng.randint(1, 14)):
            indent = rng.choice([" " * 4, "\t", " " * 2]) * depth
            body = rng.choice(
                [
                    f"x{rng.randint(0, 3)} = f(x, y)",
                    "}" * rng.randint(1, 30),
                    f"# {'-' * rng.randint(0, 60)}",
                    "",
                    f"value_{rng.choice('abcd')}{rng.choice('abcd')}",
                    "Straße = ΟΔΟΣ(x)" if index % 4 == 0 else "return None",
                ]
            )
            lines += [indent + body] * rng.randint(1, 8)
        block = "\n".join(lines)
        texts.append((block + "\n") * rng.randint(1, 4))
    return texts


@needs_numba
def test_repeated_shingles_are_hashed_once_and_signatures_are_unchanged() -> None:
    texts = _repetitive_texts(150, seed=31)
    positions = sum(max(len(tokenize(t)) - 4, 0) for t in texts)
    distinct = [shingles(t) for t in texts]
    assert positions > 8 * sum(map(len, distinct))  # repetition is what this test is about
    hasher = MinHasher()
    buf, offsets = minhash._batch_buffer(texts + texts[:20])  # texts seen twice in one batch
    joined, starts, ends, keys, doc_tokens = NUMBA_KERNELS.join_tokens(buf, offsets)
    words = NUMBA_KERNELS._big_endian_words(joined)
    gram_starts, gram_ends, doc_shingles = NUMBA_KERNELS.distinct_shingles(
        words, starts, ends, keys, doc_tokens, hasher.ngram
    )
    data = joined.tobytes()
    for d, expected in enumerate(distinct + distinct[:20]):
        rows = range(doc_shingles[d], doc_shingles[d + 1])
        found = [data[gram_starts[r] : gram_ends[r]] for r in rows]
        assert len(found) == len(set(found)) and set(found) == expected


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_signatures_equal_datasketch_on_heavily_repeated_shingles(scheme: str) -> None:
    texts = _repetitive_texts(150, seed=37)
    texts.insert(75, "\n".join(texts[:60]) * 2)  # more text than one compiled run takes
    assert len(texts[75]) > 1 << 16
    hasher = MinHasher(scheme=scheme)
    signatures, too_short = hasher.signatures(texts + texts[:10])
    assert not too_short.any()
    assert np.array_equal(signatures[-10:], signatures[:10])
    for text, signature in zip(texts, signatures, strict=False):
        assert np.array_equal(signature.astype(np.uint64), _datasketch(text, 250, 1, scheme))
    for text in texts[:40]:
        expected = sorted(datasketch.hashfunc.sha1_hash32(g) for g in shingles(text))
        assert hasher.hashes(text).tolist() == expected


@needs_numba
def test_slice_comparison_sees_every_byte() -> None:
    rng = random.Random(41)
    pieces = [bytes(rng.choices(b"ab", k=n)) for n in range(14) for _ in range(6)]
    data = b"".join(pieces)
    words = NUMBA_KERNELS._big_endian_words(np.frombuffer(data, np.uint8))
    bounds, start = [], 0
    for piece in pieces:
        bounds.append((start, start + len(piece)))
        start += len(piece)
    pairs = 0
    for s1, e1 in bounds:
        for s2, e2 in bounds:
            same = NUMBA_KERNELS._same_slices(words, s1, e1, s2, e2)
            assert same == (data[s1:e1] == data[s2:e2]), (data[s1:e1], data[s2:e2])
            pairs += same and (s1, e1) != (s2, e2)
    assert pairs > 20  # equal pieces at different offsets were compared


def test_default_is_datasketch_default() -> None:
    text = TEXTS[0]
    sketch = datasketch.MinHash(num_perm=250)
    sketch.update_batch(list(shingles(text)))
    assert np.array_equal(MinHasher().signatures([text])[0][0], sketch.hashvalues)


@pytest.mark.usefixtures("backend")
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


@pytest.mark.usefixtures("backend")
def test_empty_batch() -> None:
    signatures, too_short = MinHasher(num_perm=16).signatures([])
    assert signatures.shape == (0, 16) and too_short.shape == (0,)
    assert MinHasher(num_perm=16).signatures_from_hashes([]).shape == (0, 16)


@needs_numba
@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_numba_path_equals_numpy_path(monkeypatch: pytest.MonkeyPatch, scheme: str) -> None:
    # Lone surrogates are separators on both paths (no datasketch value exists to compare).
    surrogates = ["a\ud800b c d e f", "\udfff" * 6, "x y\udc80 z w v u ünï"]
    texts = _mixed_texts(3000, seed=23) + TEXTS + EDGE_TEXTS + PROSE + surrogates
    hasher = MinHasher(num_perm=100, seed=7, scheme=scheme)
    compiled, compiled_short = hasher.signatures(texts)
    compiled_hashes = [hasher.hashes(t) for t in texts[:500]]
    compiled_from_hashes = hasher.signatures_from_hashes(compiled_hashes)
    monkeypatch.setattr(minhash, "kernels", None)
    plain, plain_short = hasher.signatures(texts)
    plain_hashes = [hasher.hashes(t) for t in texts[:500]]
    assert np.array_equal(compiled, plain)
    assert np.array_equal(compiled_short, plain_short)
    for ours, theirs in zip(compiled_hashes, plain_hashes, strict=True):
        assert (ours is None and theirs is None) or np.array_equal(ours, theirs)
    assert np.array_equal(compiled_from_hashes, hasher.signatures_from_hashes(plain_hashes))


@needs_numba
def test_numba_sha1_equals_hashlib() -> None:
    rng = random.Random(13)
    messages = [rng.randbytes(n) for n in range(301)] + [rng.randbytes(n) for n in range(301)]
    rng.shuffle(messages)
    lengths = np.array([len(m) for m in messages], dtype=np.int64)
    ends = np.cumsum(lengths)
    data = np.frombuffer(b"".join(messages), dtype=np.uint8)
    hashes = NUMBA_KERNELS.sha1_hash32_slices(data, ends - lengths, ends)
    expected = [int.from_bytes(hashlib.sha1(m).digest()[:4], "little") for m in messages]
    assert hashes.tolist() == expected


def test_environment_variable_selects_numpy_path() -> None:
    code = "from beam_pipeline.core import minhash; print(minhash.kernels is None)"
    env = dict(os.environ, SELFCODEALIGN_MINHASH_NUMBA="0")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "True"


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
