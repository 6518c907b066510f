"""MinHash signatures per second, and the whole near-dedup stage in Beam.

    .venv/bin/python bench/bench_minhash.py signatures [--docs 3000] [--runs 5]
    .venv/bin/python bench/bench_minhash.py stage [--docs 200000] [--workers 2] [--runs 1]
    .venv/bin/python bench/bench_minhash.py removal [--pairs 300] [--reference_script PATH]

`signatures`: one process, one thread, the same synthetic Python functions for every method,
each timed from text to a 250-permutation signature (tokenising and shingling included):
ours (`MinHasher.signatures` on the whole batch, compiled with numba and on the numpy fallback;
also the dedup stage's own route, `hashes` per document then `signatures_from_hashes`),
datasketch `update` once per shingle,
datasketch `update_batch` once per document, rensa `RMinHash.update` per document and rensa's
bulk `digest_matrix_from_token_sets`. Ours and datasketch give identical values (checked
here too); rensa uses another hash, so its values differ. Prints the median docs/s of --runs
(wall clock, and per CPU-second of the process) and the ratios.

`stage`: `NearDedup` at 0.7 on --docs synthetic functions (10% planted near-duplicates)
generated inside the pipeline, on FnApiRunner with --workers worker processes. Prints docs/s
(wall clock, and per CPU-second of this process and its worker processes, which other jobs on
the machine disturb less) for the whole pipeline and for the same pipeline without the dedup
(generation baseline).

`removal`: how often near-duplicate code is removed. Each pair is a standard-library function
and a copy mutated (identifiers renamed, constants or operators changed, lines deleted,
duplicated, swapped or commented) until the exact Jaccard of the two texts' shingle sets under
the reference's tokenisation lies in 0.7-0.8 or 0.8-0.9; --pairs per bucket. Prints the share
of pairs `NearDedup` at 0.7 removes (FnApiRunner). With --reference_script (the reference
implementation's `minhash_dedup.py`, from its own checkout; its dependencies must be
importable), that script is run on the same texts too, and the share of pairs on which both
decide alike is printed.
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
import keyword
import os
import pathlib
import random
import re
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
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


def _rate(fn: Callable[[list[str]], object], texts: list[str]) -> tuple[float, float]:
    """(docs per second of wall clock, docs per CPU-second of this process)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    fn(texts)
    return (
        len(texts) / (time.perf_counter() - start),
        len(texts) / (time.process_time() - cpu_start),
    )


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
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    for _ in range(runs):  # interleaved, so load changes hit every method alike
        for name, fn in methods.items():
            rates[name].append(_rate(fn, texts))
    wall = {name: statistics.median(r[0] for r in rs) for name, rs in rates.items()}
    cpu = {name: statistics.median(r[1] for r in rs) for name, rs in rates.items()}
    print(
        f"docs: {docs}  shingles/doc: {grams / docs:.1f}  num_perm: {NUM_PERM}  runs: {runs}  "
        f"python: {sys.version.split()[0]}  datasketch: {datasketch.__version__}  "
        f"numpy: {np.__version__}  load average: {os.getloadavg()[0]:.1f}"
    )
    # Docs per CPU-second of this process: other jobs on a shared machine disturb it less
    # than the wall clock.
    for name in methods:
        runs_text = ", ".join(f"{r[0]:.0f}" for r in rates[name])
        print(
            f"{name:38s} {wall[name]:9.0f} docs/s  ours/this: {wall[ours_name] / wall[name]:6.2f}"
            f"  {cpu[name]:9.0f} per CPU-s  ours/this: {cpu[ours_name] / cpu[name]:6.2f}"
            f"  [{runs_text}]"
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


# ---------------------------------------------------------------------------------------------
# removal


def stdlib_functions() -> Iterator[str]:
    """Distinct functions of 12-60 lines from the standard library's top-level modules."""
    seen: set[str] = set()
    for path in sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            source = path.read_text()
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                text = ast.get_source_segment(source, node)
                if text and 12 <= text.count("\n") + 1 <= 60 and text not in seen:
                    seen.add(text)
                    yield text


_IDENTIFIER = re.compile(r"\b[A-Za-z_][A-Za-z_0-9]*\b")
_RESERVED = set(keyword.kwlist) | {"self", "cls"}
_OPERATORS = {"+": "-", "-": "+", "==": "!=", "<": "<=", ">": ">=", "and": "or", "or": "and"}


def mutate(text: str, rng: random.Random) -> str:
    """One small edit a copied-and-adapted function shows; the text unchanged if none applies."""
    lines = text.split("\n")
    edit = rng.choice(["rename", "constant", "delete", "duplicate", "swap", "operator", "comment"])
    if edit == "rename":
        names = sorted(set(_IDENTIFIER.findall(text)) - _RESERVED)
        if names:
            old = rng.choice(names)
            new = old + rng.choice(["_v", "2", "_new"])
            return re.sub(rf"\b{re.escape(old)}\b", new, text)
    elif edit == "constant":
        numbers = list(re.finditer(r"\b\d+\b", text))
        if numbers:
            m = rng.choice(numbers)
            return text[: m.start()] + str(int(m.group()) + rng.randint(1, 9)) + text[m.end() :]
    elif edit == "operator":
        operators = list(re.finditer(r" (\+|-|==|<|>|and|or) ", text))
        if operators:
            m = rng.choice(operators)
            return text[: m.start()] + f" {_OPERATORS[m.group(1)]} " + text[m.end() :]
    elif len(lines) > 3:
        i = rng.randrange(1, len(lines) - 1)
        if edit == "delete":
            del lines[i]
        elif edit == "duplicate":
            lines.insert(i, lines[i])
        elif edit == "swap":
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        else:
            indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
            lines.insert(i, f"{indent}# {rng.choice(['check', 'note', 'fast path'])}")
        return "\n".join(lines)
    return text


BUCKETS = ((0.7, 0.8), (0.8, 0.9))


def reference_jaccard(text_a: str, text_b: str) -> float:
    """Exact Jaccard of the reference's 5-gram shingle sets, stated here on its own so the
    pairs stay the same whatever tokenisation the package under test uses."""
    sets = []
    for text in (text_a, text_b):
        tokens = re.split(r"\W", text.lower())
        sets.append({" ".join(tokens[i : i + 5]) for i in range(len(tokens) - 4)})
    union = len(sets[0] | sets[1])
    return len(sets[0] & sets[1]) / union if union else 0.0


def mutated_pairs(per_bucket: int, seed: int = 11) -> dict[tuple[float, float], list]:
    """bucket -> [(function, mutated copy, exact shingle Jaccard)], one pair per function."""
    rng = random.Random(seed)
    functions = list(stdlib_functions())
    rng.shuffle(functions)
    pairs: dict[tuple[float, float], list] = {bucket: [] for bucket in BUCKETS}
    for text in functions:
        if all(len(found) >= per_bucket for found in pairs.values()):
            break
        if len(text) < 200:
            continue
        copy = text
        for _ in range(40):  # mutate until the copy falls into a bucket or below them
            copy = mutate(copy, rng)
            similarity = reference_jaccard(text, copy)
            bucket = next((b for b in BUCKETS if b[0] <= similarity < b[1]), None)
            if bucket and len(pairs[bucket]) < per_bucket:
                pairs[bucket].append((text, copy, similarity))
                break
            if similarity < BUCKETS[0][0]:
                break
    return pairs


def _ours_removed(pairs: list) -> set[int]:
    records = [
        Seed(id=f"p{i:05d}{side}", seed=text)
        for i, (a, b, _) in enumerate(pairs)
        for side, text in (("a", a), ("b", b))
    ]
    with tempfile.TemporaryDirectory() as scratch:
        out = pathlib.Path(scratch) / "rejected.txt"
        with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as pipeline:
            outputs = pipeline | beam.Create(records) | NearDedup("bench", "seed", threshold=0.7)
            _ = (
                outputs.rejected
                | beam.Map(lambda r: r.id)
                | beam.io.WriteToText(str(out), num_shards=1, shard_name_template="")
            )
        return {int(line[1:6]) for line in out.read_text().split()}


def _reference_removed(pairs: list, script: str) -> set[int]:
    with tempfile.TemporaryDirectory() as scratch:
        source, output = pathlib.Path(scratch) / "in.jsonl", pathlib.Path(scratch) / "out.jsonl"
        with source.open("w") as handle:
            for i, (a, b, _) in enumerate(pairs):
                for text in (a, b):
                    handle.write(json.dumps({"pair": i, "response": text}) + "\n")
        command = [sys.executable, script, "--data_files", str(source), "--column", "response"]
        command += ["--output", str(output), "--num_proc", "1"]
        env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HOME=str(pathlib.Path(scratch) / "hf"))
        subprocess.run(command, check=True, env=env, capture_output=True)
        kept = collections.Counter(json.loads(line)["pair"] for line in output.open())
        return {i for i in range(len(pairs)) if kept[i] < 2}


def bench_removal(per_bucket: int, reference_script: str | None) -> None:
    print("| Jaccard | pairs | mean | ours removes | reference removes | same decision |")
    print("|---|---|---|---|---|---|")
    for (low, high), pairs in mutated_pairs(per_bucket).items():
        mean = statistics.mean(similarity for _, _, similarity in pairs)
        ours = _ours_removed(pairs)
        row = f"| {low}-{high} | {len(pairs)} | {mean:.3f} | {len(ours) / len(pairs):.1%} |"
        if reference_script:
            theirs = _reference_removed(pairs, reference_script)
            same = sum((i in ours) == (i in theirs) for i in range(len(pairs)))
            row += f" {len(theirs) / len(pairs):.1%} | {same / len(pairs):.1%} |"
        else:
            row += " - | - |"
        print(row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["signatures", "stage", "removal"])
    parser.add_argument("--docs", type=int)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=300, help="removal: pairs per bucket")
    parser.add_argument("--reference_script", help="removal: the reference's minhash_dedup.py")
    args = parser.parse_args()
    if args.what == "signatures":
        bench_signatures(args.docs or 3000, args.runs or 5)
    elif args.what == "removal":
        bench_removal(args.pairs, args.reference_script)
    else:
        bench_stage(args.docs or 200_000, args.workers, args.runs or 1)


if __name__ == "__main__":
    main()
