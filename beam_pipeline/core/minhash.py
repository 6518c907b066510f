"""MinHash signatures of word 5-gram shingles, vectorised over a batch of documents.

Shingles (method.md §4): the text is lower-cased and split at EVERY single non-word character,
`re.split(r"\\W", text.lower())`, keeping the empty tokens between consecutive separators, so
the punctuation and indentation of code count (`f(a, b)` is `f`, `a`, ``, `b`, ``); each run of
`ngram` consecutive tokens joined by single spaces, UTF-8 encoded, is one shingle. A text with
fewer than `ngram` tokens has no shingle: it is flagged as too short and never deduplicated
(the reference drops such records; see `docs/dedup.md`).

Signatures are bit-identical to `datasketch.MinHash(num_perm, seed, scheme=...)` fed the same
shingles: the shingle hash is the first four bytes of its SHA-1 read little-endian
(datasketch's `sha1_hash32`) and the permutation parameters are drawn from
`numpy.random.RandomState(seed)` in datasketch's order. Two schemes are supported:
`affine32` (datasketch >= 2.0 default: MurmurHash3 finaliser, then `a * h + b mod 2**32`) and
`legacy` (datasketch < 2.0, the arithmetic the reference's own MinHash also uses, with its
own permutation draws: `(a * h + b) mod (2**61 - 1)`, truncated to 32 bits). Both store
32-bit values, so signatures are `uint32` arrays either way.

Two implementations give the same values. With numba (the default when it is importable),
`minhash_numba` tokenises ASCII text, finds each document's distinct shingles as slices of its
joined tokens, hashes each once with its own SHA-1 and applies the permutations to the
document's row, all compiled
(cached on disk, so the compile is paid once per machine, not per bundle); non-ASCII text is
tokenised by Python first. Without numba, or with `SELFCODEALIGN_MINHASH_NUMBA=0`, the numpy
path builds the shingle set with `hashlib.sha1`, hashes every shingle of a batch into one
array and applies each permutation to the whole array, with a segmented minimum per document.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from collections.abc import Sequence
from types import ModuleType

import numpy as np

NON_WORD_RE = re.compile(r"\W")
# bytes \W is ASCII-only: on ASCII text it splits exactly where NON_WORD_RE does.
ASCII_NON_WORD_RE = re.compile(rb"\W")

DEFAULT_NUM_PERM = 250
DEFAULT_SEED = 1
DEFAULT_NGRAM = 5
SCHEMES = ("affine32", "legacy")

_MERSENNE_PRIME = np.uint64((1 << 61) - 1)
_MAX_HASH32 = np.uint64((1 << 32) - 1)
# Shingle hashes permuted at once: the working buffer (CHUNK_ROWS * 4 or 8 bytes) stays in
# cache, and the per-permutation Python overhead is amortised over this many values.
CHUNK_ROWS = 16_384

_sha1 = hashlib.sha1


def _load_kernels() -> ModuleType | None:
    if os.environ.get("SELFCODEALIGN_MINHASH_NUMBA", "1") == "0":
        return None
    try:
        from beam_pipeline.core import minhash_numba
    except ImportError:
        return None
    return minhash_numba


# The compiled kernels, or None for the numpy path; chosen once, at import.
kernels = _load_kernels()


def tokenize(text: str) -> list[str]:
    """The lower-cased text split at every non-word character, empty tokens kept."""
    return NON_WORD_RE.split(text.lower())


def _tokens_bytes(text: str) -> list[bytes]:
    lowered = text.lower()
    if lowered.isascii():
        return ASCII_NON_WORD_RE.split(lowered.encode("ascii"))
    # A lone surrogate is a non-word character, so no token holds one and UTF-8 cannot fail.
    return [t.encode("utf-8") for t in NON_WORD_RE.split(lowered)]


def shingles(text: str, ngram: int = DEFAULT_NGRAM) -> set[bytes]:
    """The set of word n-gram shingles of `text` (empty when it has fewer than `ngram` tokens)."""
    tokens = _tokens_bytes(text)
    if len(tokens) < ngram:
        return set()
    return set(map(b" ".join, zip(*(tokens[i:] for i in range(ngram)), strict=False)))


def _kernel_bytes(text: str) -> bytes:
    """What the kernels tokenise: ASCII text as it is, other text already tokenised by Python."""
    if text.isascii():
        return text.encode("ascii")
    # str.lower() and Unicode \w have no byte-level equivalent, so Python does them. Each
    # separator replaced by one space is " ".join(tokenize(text)); the kernel splits it back.
    return NON_WORD_RE.sub(" ", text.lower()).encode("utf-8")


def _batch_buffer(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(buffer, offsets): the texts' kernel bytes back to back, document d at [o[d], o[d+1])."""
    parts = [_kernel_bytes(t) for t in texts]
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    return np.frombuffer(b"".join(parts), dtype=np.uint8), offsets


def shingle_hashes(text: str, ngram: int = DEFAULT_NGRAM) -> np.ndarray | None:
    """32-bit SHA-1 hashes of the text's distinct shingles; None when the text is too short.

    Equal to `[datasketch.hashfunc.sha1_hash32(s) for s in shingles(text)]` as a uint32 array,
    sorted.
    """
    if kernels is not None:
        hashes = kernels.distinct_shingle_hashes(
            np.frombuffer(_kernel_bytes(text), np.uint8), ngram
        )
        return hashes if len(hashes) else None
    grams = shingles(text, ngram)
    if not grams:
        return None
    digests = b"".join([_sha1(g).digest() for g in grams])
    # Each SHA-1 digest is 20 bytes = 5 little-endian uint32 words; the first word of each is
    # what sha1_hash32 returns. Sorted so the array does not depend on set iteration order.
    return np.sort(np.frombuffer(digests, dtype="<u4")[::5])


def _fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (datasketch's pre-mix for the affine32 scheme)."""
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


@functools.lru_cache(maxsize=32)
def permutations(num_perm: int, seed: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) permutation parameters datasketch draws for this num_perm, seed and scheme."""
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        pairs = np.array(
            [
                (
                    gen.randint(1, _MERSENNE_PRIME, dtype=np.uint64),
                    gen.randint(0, _MERSENNE_PRIME, dtype=np.uint64),
                )
                for _ in range(num_perm)
            ],
            dtype=np.uint64,
        ).T
        a, b = pairs[0].copy(), pairs[1].copy()
    elif scheme == "affine32":
        a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    else:
        raise ValueError(f"unknown MinHash scheme {scheme!r}; expected one of {SCHEMES}")
    a.setflags(write=False)
    b.setflags(write=False)
    return a, b


@dataclasses.dataclass(frozen=True)
class MinHasher:
    """Computes MinHash signatures for batches of texts; small and picklable."""

    num_perm: int = DEFAULT_NUM_PERM
    seed: int = DEFAULT_SEED
    ngram: int = DEFAULT_NGRAM
    scheme: str = "affine32"

    def __post_init__(self) -> None:
        if self.num_perm < 1:
            raise ValueError(f"num_perm must be positive, got {self.num_perm}")
        if self.ngram < 1:
            raise ValueError(f"ngram must be positive, got {self.ngram}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown MinHash scheme {self.scheme!r}; expected one of {SCHEMES}")

    def hashes(self, text: str) -> np.ndarray | None:
        """Shingle hashes of one text, or None when it is too short to deduplicate."""
        return shingle_hashes(text, self.ngram)

    def signatures(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures, too_short): an (n, num_perm) uint32 matrix and an n-bool mask.

        Rows of too-short texts are all 0xFFFFFFFF (datasketch's empty MinHash) and must not
        be deduplicated.
        """
        if kernels is not None:
            buf, offsets = _batch_buffer(texts)
            out = np.full((len(texts), self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
            a, b = permutations(self.num_perm, self.seed, self.scheme)
            legacy = self.scheme == "legacy"
            too_short = kernels.signatures(buf, offsets, self.ngram, a, b, legacy, out)
            return out, too_short
        hashed = [self.hashes(t) for t in texts]
        too_short = np.array([h is None for h in hashed], dtype=bool)
        return self.signatures_from_hashes(hashed), too_short

    def signatures_from_hashes(self, hashed: Sequence[np.ndarray | None]) -> np.ndarray:
        """Signatures from per-document shingle hash arrays (None or empty: empty MinHash)."""
        n = len(hashed)
        out = np.full((n, self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        lengths = np.array([0 if h is None else len(h) for h in hashed], dtype=np.int64)
        if n == 0 or not lengths.any():
            return out
        values = np.concatenate([h for h in hashed if h is not None and len(h)]).astype(np.uint32)
        a, b = permutations(self.num_perm, self.seed, self.scheme)
        if kernels is not None:
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            kernels.signatures_from_hashes(values, offsets, a, b, self.scheme == "legacy", out)
            return out
        docs = np.repeat(np.arange(n), lengths)
        values = _fmix32(values) if self.scheme == "affine32" else values.astype(np.uint64)
        for start in range(0, len(values), CHUNK_ROWS):
            chunk = values[start : start + CHUNK_ROWS]
            chunk_docs = docs[start : start + CHUNK_ROWS]
            # Rows are grouped by document, so a segmented minimum gives one value per document
            # present in the chunk; a document split across chunks is merged by np.minimum.
            starts = np.flatnonzero(np.r_[True, chunk_docs[1:] != chunk_docs[:-1]])
            mins = self._segment_minima(chunk, starts, a, b)
            rows = chunk_docs[starts]
            out[rows] = np.minimum(out[rows], mins.T)
        return out

    def _segment_minima(
        self, chunk: np.ndarray, starts: np.ndarray, a: np.ndarray, b: np.ndarray
    ) -> np.ndarray:
        """(num_perm, segments): per permutation, the minimum permuted value of each segment.

        One permutation at a time over the whole chunk: contiguous in-place operations on a
        cache-sized buffer are several times faster than one broadcast (rows x num_perm)
        product, whose temporaries do not fit in cache.
        """
        mins = np.empty((self.num_perm, len(starts)), dtype=np.uint32)
        work = np.empty_like(chunk)
        for k in range(self.num_perm):
            np.multiply(chunk, a[k], out=work)
            np.add(work, b[k], out=work)  # uint32: wrap-around is the affine scheme's mod 2**32
            if self.scheme == "legacy":
                # datasketch's own arithmetic: uint64 wrap-around, then mod 2**61-1, low 32 bits.
                np.remainder(work, _MERSENNE_PRIME, out=work)
                np.bitwise_and(work, _MAX_HASH32, out=work)
            mins[k] = np.minimum.reduceat(work, starts)
        return mins


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Estimated Jaccard similarity: the fraction of equal signature positions."""
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"signatures differ in shape: {sig_a.shape} vs {sig_b.shape}")
    return float(np.count_nonzero(sig_a == sig_b)) / float(sig_a.shape[-1])


def true_jaccard(text_a: str, text_b: str, ngram: int = DEFAULT_NGRAM) -> float:
    """Exact Jaccard similarity of the two texts' shingle sets (0.0 when both are empty)."""
    sa, sb = shingles(text_a, ngram), shingles(text_b, ngram)
    union = len(sa | sb)
    return len(sa & sb) / union if union else 0.0
