"""Numba kernels behind `minhash.py`: tokens, shingle SHA-1 and permutations, compiled.

`minhash.py` imports this module only when numba is importable (and not switched off); every
kernel reproduces, bit for bit, what the module's numpy path computes.

A batch arrives as one uint8 buffer holding every document back to back, with document
offsets. ASCII documents are their raw text: the kernel lower-cases ASCII letters and ends a
token at every byte outside `[A-Za-z0-9_]`, which is exactly `re.split(r"\\W", text.lower())`
on ASCII, empty tokens included. Other documents arrive already tokenised by Python (the
lower-cased text with every non-word character replaced by one space); their bytes >= 0x80
count as word bytes, so the same split gives back Python's tokens. With each separator written
as one space, the buffer is the tokens joined by single spaces, so every shingle is a
contiguous slice of it: compared and hashed in place, never built as a bytes object. Only
each document's distinct slices are hashed: in code most shingle positions repeat an
earlier shingle of the same document.

SHA-1 runs on `_LANES` shingles side by side (all with the same number of 64-byte blocks), each
step one loop over the lanes, which the compiler turns into SIMD instructions: a single
message's rounds depend on each other and leave most of the core idle.

numba promotes uint32 operands to 64 bits and turns a uint64 mixed with a Python int into a
signed or float value, hence the explicit `np.uint32(...)` narrowing and typed constants.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_LANES = 64
_RUN_BYTES = 1 << 15

_U32 = np.uint32
_M32 = np.uint64(0xFFFFFFFF)
_MERSENNE = np.uint64((1 << 61) - 1)
_U61 = np.uint64(61)
_U32_SHIFT = np.uint64(32)
_HIGH_WORD = np.uint64(0xFFFFFFFF00000000)
_FMIX_M1 = np.uint64(0x85EBCA6B)
_FMIX_M2 = np.uint64(0xC2B2AE35)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_COMBINE = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it is a bijection mod 2**64
_MIX_M1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_SHA1_INIT = np.array([0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0], np.uint32)


def _join_table() -> np.ndarray:
    """Each byte as it appears in the joined tokens: ASCII letters lower-cased, word bytes
    (`[A-Za-z0-9_]` and every byte >= 0x80) kept, every other byte a space."""
    codes = np.arange(256)
    lower = (codes >= ord("a")) & (codes <= ord("z"))
    upper = (codes >= ord("A")) & (codes <= ord("Z"))
    digit = (codes >= ord("0")) & (codes <= ord("9"))
    word = lower | upper | digit | (codes == ord("_")) | (codes >= 0x80)
    return np.where(word, np.where(upper, codes + 32, codes), 32).astype(np.uint8)


_JOIN_BYTE = _join_table()


@njit(cache=True)
def join_tokens(
    buf: np.ndarray, doc_offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(joined, token starts, token ends, token keys, per-document token offsets) of a batch.

    Every non-word byte ends a token, so a document with k separators has k + 1 tokens, empty
    ones included. `joined` is the document lower-cased with each separator replaced by one
    space: the tokens joined by single spaces, and the n-gram of tokens i..i+n-1 is
    `joined[starts[i]:ends[i + n - 1]]`. A token's key is the 64-bit FNV-1a hash of its bytes.
    """
    n_docs = len(doc_offsets) - 1
    joined = np.empty(len(buf), np.uint8)
    ends = np.empty(len(buf) + n_docs, np.int64)
    doc_tokens = np.zeros(n_docs + 1, np.int64)
    count = 0
    for d in range(n_docs):
        for p in range(doc_offsets[d], doc_offsets[d + 1]):
            # No branch on the byte: separators fall where a branch predictor cannot guess
            # (a third of code bytes), so each byte stores a candidate end and a separator
            # keeps it by moving on.
            c = _JOIN_BYTE[buf[p]]
            joined[p] = c
            ends[count] = p
            count += c == 32
        ends[count] = doc_offsets[d + 1]
        count += 1
        doc_tokens[d + 1] = count
    starts = np.empty(count, np.int64)
    keys = np.empty(count, np.uint64)
    for d in range(n_docs):
        start = doc_offsets[d]
        for i in range(doc_tokens[d], doc_tokens[d + 1]):
            # A separate pass: folding the key into the byte loop above makes it 3x slower.
            key = _FNV_OFFSET
            for p in range(start, ends[i]):
                key = (key ^ np.uint64(joined[p])) * _FNV_PRIME
            starts[i] = start
            keys[i] = key
            start = ends[i] + 1
    return joined, starts, ends[:count], keys, doc_tokens


@njit(cache=True)
def _big_endian_words(data: np.ndarray) -> np.ndarray:
    """words[p] = data[p:p + 4] read big-endian, zero past the end; len(data) + 1 entries."""
    n = len(data)
    words = np.zeros(n + 1, np.uint32)
    for p in range(n - 3):
        words[p] = (
            (_U32(data[p]) << _U32(24))
            | (_U32(data[p + 1]) << _U32(16))
            | (_U32(data[p + 2]) << _U32(8))
            | _U32(data[p + 3])
        )
    for p in range(max(n - 3, 0), n):
        word = _U32(0)
        for q in range(4):
            byte = _U32(data[p + q]) if p + q < n else _U32(0)
            word = _U32((word << _U32(8)) | byte)
        words[p] = word
    return words


@njit(cache=True)
def _message_block(
    w: np.ndarray,
    words: np.ndarray,
    lane_start: np.ndarray,
    lane_length: np.ndarray,
    lanes: int,
    block: int,
    last: bool,
) -> None:
    """Words 0-15 of every lane's padded message block: data, 0x80, zeros, bit length."""
    base = 64 * block
    for lane in range(lanes):
        start = lane_start[lane] + base
        rest = lane_length[lane] - base  # message bytes in this block and after it
        full = min(max(rest, 0) // 4, 16)
        for t in range(full):
            w[t, lane] = words[start + 4 * t]
        if full < 16:
            partial = rest - 4 * full  # message bytes in word `full`: 0-3, or < 0 if none
            word = _U32(0)
            if partial >= 0:
                # Keep the top `partial` bytes of the word, then the 0x80 byte after them.
                mask = (_HIGH_WORD >> np.uint64(8 * partial)) & _M32
                pad = np.uint64(0x80) << np.uint64(8 * (3 - partial))
                word = _U32((np.uint64(words[start + 4 * full]) & mask) | pad)
            w[full, lane] = word
            for t in range(full + 1, 16):
                w[t, lane] = 0
        if last:
            bits = np.uint64(lane_length[lane]) * np.uint64(8)
            w[14, lane] = _U32(bits >> _U32_SHIFT)
            w[15, lane] = _U32(bits & _M32)


@njit(cache=True)
def _rotl(x: np.uint32, n: int) -> np.uint32:
    return _U32((x << _U32(n)) | (x >> _U32(32 - n)))


@njit(cache=True)
def _compress(h: np.ndarray, s: np.ndarray, w: np.ndarray, lanes: int) -> None:
    """One SHA-1 block per lane: h[:, lane] absorbs message words w[0:16, lane]."""
    for t in range(16, 80):
        for lane in range(lanes):
            w[t, lane] = _rotl(
                w[t - 3, lane] ^ w[t - 8, lane] ^ w[t - 14, lane] ^ w[t - 16, lane], 1
            )
    s[:, :lanes] = h[:, :lanes]
    for t in range(80):
        for lane in range(lanes):
            a, b, c, d, e = s[0, lane], s[1, lane], s[2, lane], s[3, lane], s[4, lane]
            if t < 20:
                f = _U32((b & c) | (~b & d)) + _U32(0x5A827999)
            elif t < 40:
                f = _U32(b ^ c ^ d) + _U32(0x6ED9EBA1)
            elif t < 60:
                f = _U32((b & c) | (b & d) | (c & d)) + _U32(0x8F1BBCDC)
            else:
                f = _U32(b ^ c ^ d) + _U32(0xCA62C1D6)
            s[0, lane] = _U32(_rotl(a, 5) + f + e + w[t, lane])
            s[1, lane] = a
            s[2, lane] = _rotl(b, 30)
            s[3, lane] = c
            s[4, lane] = d
    for r in range(5):
        for lane in range(lanes):
            h[r, lane] = _U32(h[r, lane] + s[r, lane])


@njit(cache=True)
def sha1_hash32_slices(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """datasketch's `sha1_hash32(data[s:e])` for every (s, e): digest bytes 0-3, little-endian."""
    return _sha1_hash32_words(_big_endian_words(data), starts, ends)


@njit(cache=True)
def _sha1_hash32_words(words: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """`sha1_hash32_slices` of the data whose `_big_endian_words` are `words`."""
    n = len(starts)
    lengths = ends - starts
    blocks = (lengths + 8) // 64 + 1  # the 0x80 byte and the 8-byte length must fit
    # Counting sort by block count: the lanes of one group all run the same number of blocks.
    max_blocks = 0
    for i in range(n):
        max_blocks = max(max_blocks, blocks[i])
    first = np.zeros(max_blocks + 2, np.int64)
    for i in range(n):
        first[blocks[i] + 1] += 1
    for k in range(1, max_blocks + 2):
        first[k] += first[k - 1]
    order = np.empty(n, np.int64)
    fill = first.copy()
    for i in range(n):
        order[fill[blocks[i]]] = i
        fill[blocks[i]] += 1

    out = np.empty(n, np.uint32)
    h = np.empty((5, _LANES), np.uint32)
    s = np.empty((5, _LANES), np.uint32)
    w = np.empty((80, _LANES), np.uint32)
    lane_start = np.empty(_LANES, np.int64)
    lane_length = np.empty(_LANES, np.int64)
    for count in range(1, max_blocks + 1):
        for group in range(first[count], first[count + 1], _LANES):
            lanes = min(_LANES, first[count + 1] - group)
            for lane in range(lanes):
                i = order[group + lane]
                lane_start[lane] = starts[i]
                lane_length[lane] = lengths[i]
                for r in range(5):
                    h[r, lane] = _SHA1_INIT[r]
            for block in range(count):
                _message_block(w, words, lane_start, lane_length, lanes, block, block == count - 1)
                _compress(h, s, w, lanes)
            for lane in range(lanes):
                # The digest is big-endian and datasketch reads it little-endian: a byte swap.
                x = h[0, lane]
                out[order[group + lane]] = _U32(
                    (x >> _U32(24))
                    | ((x >> _U32(8)) & _U32(0xFF00))
                    | ((x << _U32(8)) & _U32(0xFF0000))
                    | (x << _U32(24))
                )
    return out


@njit(cache=True)
def _mix64(x: np.uint64) -> np.uint64:
    """MurmurHash3's 64-bit finaliser: spreads every key bit over the table index bits."""
    x = (x ^ (x >> np.uint64(33))) * _MIX_M1
    x = (x ^ (x >> np.uint64(33))) * _MIX_M2
    return x ^ (x >> np.uint64(33))


@njit(cache=True)
def _same_slices(words: np.ndarray, s1: int, e1: int, s2: int, e2: int) -> bool:
    """data[s1:e1] == data[s2:e2], four bytes at a time on the data's `_big_endian_words`."""
    length = e1 - s1
    if e2 - s2 != length:
        return False
    q = 0
    while q + 4 <= length and words[s1 + q] == words[s2 + q]:
        q += 4
    if q + 4 <= length:
        return False
    # 0-3 bytes left: compare the top bytes of the next word (zero past the end of the data).
    keep = (_HIGH_WORD >> np.uint64(8 * (length - q))) & _M32
    return (np.uint64(words[s1 + q] ^ words[s2 + q]) & keep) == 0


@njit(cache=True)
def distinct_shingles(
    words: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    keys: np.ndarray,
    doc_tokens: np.ndarray,
    ngram: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, per-document offsets) of every document's distinct shingle slices.

    `words` are the joined tokens' `_big_endian_words`. Code repeats most of its shingles
    (indentation makes runs of empty tokens), and a MinHash minimum over each distinct
    shingle once is the minimum over all of them, so repeats need no SHA-1. A shingle's key
    is a polynomial in its tokens' keys, rolled from one position to the next; an
    open-addressing table per document holds the shingles seen so far, and one whose key is
    in the table is compared with it byte for byte, so only an identical shingle is dropped.
    """
    n_docs = len(doc_tokens) - 1
    largest = 0
    total = 0
    for d in range(n_docs):
        positions = max(doc_tokens[d + 1] - doc_tokens[d] - ngram + 1, 0)
        largest = max(largest, positions)
        total += positions
    capacity = 1
    while capacity < 2 * largest:
        capacity *= 2
    owner = np.full(capacity, -1, np.int64)  # the document a slot belongs to: no clearing
    slot_key = np.empty(capacity, np.uint64)
    slot_token = np.empty(capacity, np.int64)
    gram_starts = np.empty(total, np.int64)
    gram_ends = np.empty(total, np.int64)
    doc_shingles = np.zeros(n_docs + 1, np.int64)
    top = np.uint64(1)  # _COMBINE ** (ngram - 1): the first token's factor
    for _ in range(ngram - 1):
        top *= _COMBINE
    count = 0
    for d in range(n_docs):
        first = doc_tokens[d]
        positions = doc_tokens[d + 1] - first - ngram + 1
        size = 1
        while size < 2 * positions:
            size *= 2
        mask = size - 1
        key = np.uint64(0)
        for j in range(first, first + min(ngram, doc_tokens[d + 1] - first)):
            key = key * _COMBINE + keys[j]
        for i in range(first, first + max(positions, 0)):
            if i > first:
                key = (key - keys[i - 1] * top) * _COMBINE + keys[i + ngram - 1]
            slot = np.int64(_mix64(key) & np.uint64(mask))
            start, end = starts[i], ends[i + ngram - 1]
            while True:
                if owner[slot] != d:
                    owner[slot] = d
                    slot_key[slot] = key
                    slot_token[slot] = i
                    gram_starts[count] = start
                    gram_ends[count] = end
                    count += 1
                    break
                if slot_key[slot] == key:
                    k = slot_token[slot]
                    if _same_slices(words, start, end, int(starts[k]), int(ends[k + ngram - 1])):
                        break
                slot = (slot + 1) & mask
        doc_shingles[d + 1] = count
    return gram_starts[:count], gram_ends[:count], doc_shingles


@njit(cache=True)
def _fmix32(h: np.uint64) -> np.uint64:
    h = h ^ (h >> np.uint64(16))
    h = (h * _FMIX_M1) & _M32
    h = h ^ (h >> np.uint64(13))
    h = (h * _FMIX_M2) & _M32
    return h ^ (h >> np.uint64(16))


@njit(cache=True)
def signatures_from_hashes(
    values: np.ndarray,
    doc_offsets: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    legacy: bool,
    out: np.ndarray,
) -> None:
    """Minimises row d of `out` over the permuted `values[doc_offsets[d]:doc_offsets[d + 1]]`.

    Repeated values are harmless (they cannot change a minimum), so no set is needed.
    """
    for d in range(len(doc_offsets) - 1):
        row = out[d]
        for i in range(doc_offsets[d], doc_offsets[d + 1]):
            h = np.uint64(values[i])
            if legacy:
                for k in range(len(row)):
                    value = a[k] * h + b[k]  # uint64 wrap-around, as numpy does in datasketch
                    # mod 2**61-1 without a division: 2**61 = 1 mod p and value >> 61 < 8, so
                    # the sum is below 2p and one conditional subtraction completes it.
                    value = (value & _MERSENNE) + (value >> _U61)
                    if value >= _MERSENNE:
                        value -= _MERSENNE
                    row[k] = min(row[k], _U32(value & _M32))
            else:
                mixed = _fmix32(h)
                for k in range(len(row)):
                    # Only the low 32 bits of the product survive: a * h + b mod 2**32.
                    row[k] = min(row[k], _U32(np.uint64(a[k]) * mixed + np.uint64(b[k])))


@njit(cache=True)
def signatures(
    buf: np.ndarray,
    doc_offsets: np.ndarray,
    ngram: int,
    a: np.ndarray,
    b: np.ndarray,
    legacy: bool,
    out: np.ndarray,
) -> np.ndarray:
    """Minimises every document's row of `out` over its shingles; returns the too-short mask.

    Documents go through in runs of about `_RUN_BYTES` of text: the working arrays (about
    40 bytes per byte of text) then stay in cache and are reused by the allocator, where
    one pass over a whole batch writes tens of MB of fresh pages.
    """
    n_docs = len(doc_offsets) - 1
    too_short = np.empty(n_docs, np.bool_)
    first = 0
    while first < n_docs:
        last = first + 1
        while last < n_docs and doc_offsets[last + 1] - doc_offsets[first] <= _RUN_BYTES:
            last += 1
        base = doc_offsets[first]
        run_offsets = doc_offsets[first : last + 1] - base
        joined, starts, ends, keys, doc_tokens = join_tokens(
            buf[base : doc_offsets[last]], run_offsets
        )
        words = _big_endian_words(joined)
        gram_starts, gram_ends, doc_shingles = distinct_shingles(
            words, starts, ends, keys, doc_tokens, ngram
        )
        hashes = _sha1_hash32_words(words, gram_starts, gram_ends)
        signatures_from_hashes(hashes, doc_shingles, a, b, legacy, out[first:last])
        too_short[first:last] = doc_shingles[1:] == doc_shingles[:-1]
        first = last
    return too_short


@njit(cache=True)
def distinct_shingle_hashes(buf: np.ndarray, ngram: int) -> np.ndarray:
    """Sorted hashes of one document's distinct shingles (empty when it is too short).

    Shingles are told apart by their bytes, not their hashes, so two different shingles whose
    32-bit hashes collide both count, as in a set of shingles.
    """
    joined, starts, ends, keys, doc_tokens = join_tokens(buf, np.array([0, len(buf)], np.int64))
    words = _big_endian_words(joined)
    gram_starts, gram_ends, _ = distinct_shingles(words, starts, ends, keys, doc_tokens, ngram)
    return np.sort(_sha1_hash32_words(words, gram_starts, gram_ends))
