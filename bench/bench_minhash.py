"""MinHash signatures per second, and the whole near-dedup stage in Beam.

    .venv/bin/python bench/bench_minhash.py signatures [--docs 3000] [--runs 5]
    .venv/bin/python bench/bench_minhash.py stage [--docs 200000] [--workers 2] [--runs 1]

`signatures`: one process, one thread, the same synthetic Python functions for every method,
each timed from text to a 250-permutation signature (tokenising and shingling included):
ours (`MinHasher.signatures` on the whole batch, compiled with numba and on the numpy fallback;
also the dedup stage's own route, `hashes` per document then `signatures_from_hashes`),
datasketch `update` once per shingle,
datasketch `update_batch` once per document, rensa `RMinHash.update` per document and rensa's
bulk `digest_matrix_from_token_sets`. Ours and datasketch give identical values (checked
here too); rensa uses another hash, so its values differ. Prints the median docs/s of --runs
and the ratios.

`stage`: `NearDedup` at 0.7 on --docs synthetic functions (10% planted near-duplicates)
generated inside the pipeline, on FnApiRunner with --workers worker processes. Prints docs/s
(wall clock, and per CPU-second of this process and its worker processes, which other jobs on
the machine disturb less) for the whole pipeline and for the same pipeline without the dedup
(generation baseline).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import apache_beam as beam
import datasketch
import numpy as np
import rensa
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline.core import minhash
from beam_pipeline.core.minhash import MinHasher, shingles
from beam_pipeline.records import Seed
from beam_pipeline.stages.dedup import NearDedup

NUM_PERM = 250
WORDS = [
    "value", "items", "count", "total", "result", "index", "node", "data", "key", "name",
    "size", "left", "right", "start", "end", "step", "buffer", "line", "text", "path",
    "config", "cache", "score", "weight", "matrix", "row", "col", "queue", "stack", "graph",
]  # fmt: skip


def synthetic_function(rng: random.Random) -> str:
    """A plausible small Python function with random names, 8-30 lines."""
    words = [f"{rng.choice(WORDS)}_{rng.randint(0, 999)}" for _ in range(12)]
    name, args = words[0], words[1 : 1 + rng.randint(1, 4)]
    lines = [
        f"def {name}({', '.join(args)}):",
        f'    """Compute the {words[5]} of {words[6]} using {words[7]} and {args[0]}."""',
        f"    {words[8]} = []",
    ]
    for _ in range(rng.randint(2, 9)):
        var = rng.choice(words[8:])
        arg = rng.choice(args)
        lines += [
            f"    for {var} in range(len({arg})):",
            f"        if {arg}[{var}] > {rng.randint(0, 100)}:",
            f"            {words[8]}.append({arg}[{var}] * {rng.randint(2, 9)} + {var})",
        ]
    lines.append(f"    return sum({words[8]}) / max(1, len({args[0]}))")
    return "\n".join(lines)


def near_copy(text: str, rng: random.Random) -> str:
    """The function with one identifier or constant changed (Jaccard around 0.8-0.95)."""
    tokens = text.split(" ")
    position = rng.randrange(len(tokens))
    tokens[position] = tokens[position] + "_x"
    return " ".join(tokens)


def corpus(count: int, shard: int = 0) -> Iterator[str]:
    previous = ""
    for index in range(count):
        rng = random.Random(shard * 10_000_019 + index)
        if previous and index % 10 == 9:
            yield near_copy(previous, rng)
        else:
            previous = synthetic_function(rng)
            yield previous


# ---------------------------------------------------------------------------------------------
# signatures


def _ours(texts: list[str]) -> np.ndarray:
    return MinHasher(num_perm=NUM_PERM).signatures(texts)[0]


def _ours_numpy(texts: list[str]) -> np.ndarray:
    compiled = minhash.kernels
    minhash.kernels = None
    try:
        return _ours(texts)
    finally:
        minhash.kernels = compiled


def _ours_stage_route(texts: list[str]) -> np.ndarray:
    hasher = MinHasher(num_perm=NUM_PERM)
    return hasher.signatures_from_hashes([hasher.hashes(t) for t in texts])


def _datasketch_update(texts: list[str]) -> list[np.ndarray]:
    out = []
    for text in texts:
        sketch = datasketch.MinHash(num_perm=NUM_PERM)
        for gram in shingles(text):
            sketch.update(gram)
        out.append(sketch.hashvalues)
    return out


def _datasketch_update_batch(texts: list[str]) -> list[np.ndarray]:
    out = []
    for text in texts:
        sketch = datasketch.MinHash(num_perm=NUM_PERM)
        sketch.update_batch(list(shingles(text)))
        out.append(sketch.hashvalues)
    return out


def _rensa_update(texts: list[str]) -> list[list[int]]:
    out = []
    for text in texts:
        sketch = rensa.RMinHash(num_perm=NUM_PERM, seed=1)
        sketch.update([g.decode() for g in shingles(text)])
        out.append(sketch.digest())
    return out


def _rensa_bulk(texts: list[str]) -> object:
    token_sets = [[g.decode() for g in shingles(text)] for text in texts]
    return rensa.RMinHash.digest_matrix_from_token_sets(token_sets, num_perm=NUM_PERM, seed=1)


def _rate(fn: Callable[[list[str]], object], texts: list[str]) -> float:
    start = time.perf_counter()
    fn(texts)
    return len(texts) / (time.perf_counter() - start)


def bench_signatures(docs: int, runs: int) -> None:
    texts = list(corpus(docs))
    grams = sum(len(shingles(t)) for t in texts)
    ours = _ours(texts)  # also compiles the kernels, or loads them from numba's cache
    reference = np.vstack(_datasketch_update_batch(texts[:200]))
    assert np.array_equal(ours[:200], reference), "signatures differ from datasketch"
    assert np.array_equal(ours, _ours_numpy(texts)), "numba and numpy paths differ"
    assert np.array_equal(ours, _ours_stage_route(texts)), "stage route differs"
    ours_name = "ours (batch, numba)" if minhash.kernels is not None else "ours (batch, numpy)"
    methods = {ours_name: _ours}
    if minhash.kernels is not None:
        methods["ours (batch, numpy fallback)"] = _ours_numpy
    methods |= {
        "ours (hashes per doc + batch perms)": _ours_stage_route,
        "datasketch update per shingle": _datasketch_update,
        "datasketch update_batch per doc": _datasketch_update_batch,
        "rensa RMinHash.update per doc": _rensa_update,
        "rensa digest_matrix_from_token_sets": _rensa_bulk,
    }
    rates: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(runs):  # interleaved, so load changes hit every method alike
        for name, fn in methods.items():
            rates[name].append(_rate(fn, texts))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    print(
        f"docs: {docs}  shingles/doc: {grams / docs:.1f}  num_perm: {NUM_PERM}  runs: {runs}  "
        f"python: {sys.version.split()[0]}  datasketch: {datasketch.__version__}  "
        f"numpy: {np.__version__}"
    )
    ours_rate = medians[ours_name]
    for name, median in medians.items():
        runs_text = ", ".join(f"{r:.0f}" for r in rates[name])
        print(
            f"{name:38s} {median:9.0f} docs/s  ours/this: {ours_rate / median:6.2f}  [{runs_text}]"
        )


# ---------------------------------------------------------------------------------------------
# stage


def _shard_records(shard: int, per_shard: int) -> Iterator[Seed]:
    for text in corpus(per_shard, shard):
        yield Seed(id=Seed.make_id(f"{shard}:{text}"), seed=text)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the SDK worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _run_stage(docs: int, workers: int, dedup: bool) -> tuple[float, float]:
    shards = 200
    per_shard = docs // shards
    argv = [
        "--runner=FnApiRunner",
        f"--direct_num_workers={workers}",
        "--direct_running_mode=multi_processing"
        if workers > 1
        else "--direct_running_mode=in_memory",
    ]
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    with beam.Pipeline(options=PipelineOptions(argv)) as pipeline:
        records = (
            pipeline
            | beam.Create(range(shards))
            | beam.Reshuffle()
            | beam.FlatMap(_shard_records, per_shard)
        )
        if dedup:
            outputs = records | NearDedup("bench", "seed", threshold=0.7)
            counted = outputs.rejected
        else:
            counted = records
        _ = counted | beam.combiners.Count.Globally() | beam.Map(print)
    count = per_shard * shards
    return count / (time.perf_counter() - start), count / (_cpu_seconds() - cpu_start)


def bench_stage(docs: int, workers: int, runs: int) -> None:
    base = [_run_stage(docs, workers, dedup=False) for _ in range(runs)]
    full = [_run_stage(docs, workers, dedup=True) for _ in range(runs)]
    print(f"docs: {docs}  workers: {workers}  runs: {runs}  (printed above: rejected count)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    for name, rates in (("generate only", base), ("generate + NearDedup", full)):
        wall = statistics.median(r[0] for r in rates)
        cpu = statistics.median(r[1] for r in rates)
        print(
            f"{name:22s} {wall:8.0f} docs/s wall  {cpu:8.0f} docs per CPU-second  "
            f"runs: {[(round(w), round(c)) for w, c in rates]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["signatures", "stage"])
    parser.add_argument("--docs", type=int)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.what == "signatures":
        bench_signatures(args.docs or 3000, args.runs or 5)
    else:
        bench_stage(args.docs or 200_000, args.workers, args.runs or 1)


if __name__ == "__main__":
    main()
