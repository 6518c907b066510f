"""The selection loop's worker: wall time and peak memory on synthetic passing samples.

    .venv/bin/python bench/bench_selection.py [--samples 1000000] [--runs 3] [--workdir DIR]

Synthetic passing samples (10 per instruction; 5% reuse one of 1,000 shared responses; 30% of
function names and classes come from small common pools; 10% of responses define nothing) are
written once, in generation order, in two forms: the compact keys the stage sends to its loop
worker (80 bytes each, from `core.selection`), and the plain keys a straightforward single
worker would hold (rank, id, whitespace-free instruction and response, the two name sets).
Each run starts one fresh process per form that reads its input in batches of 4,096 (as the
worker reads the grouped batches), sorts it into the shuffle order and runs the loop; it
reports the wall time of read + sort + loop and its peak RSS. Both forms must keep the same
number of samples. Prints the medians of --runs and the ratios plain / compact.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from beam_pipeline.core import selection

BATCH = 4096
COMMON_FUNCTIONS = [f"{w}_{k}" for w in ("solve", "main", "helper", "process") for k in range(5)]
COMMON_CLASSES = ["Stack", "Node", "Solution", "Graph", "Tree", "Queue", "Matrix", "Parser"]
WORDS = ["list", "string", "number", "matrix", "graph", "tree", "file", "date", "word", "key"]


def synthetic(n: int, seed: int = 0) -> Iterator[tuple[str, str, str, list[str], list[str]]]:
    """(id, instruction, response, function names, class names) of n passing samples."""
    rng = random.Random(seed)
    shared: list[tuple[str, list[str], list[str]]] = []
    for i in range(n // 10 + 1):
        words = rng.sample(WORDS, 4)
        instruction = (
            f"Write a Python function that takes a {words[0]} and a {words[1]} and returns the "
            f"{words[2]} of every {words[3]} in it, number {i}. Handle empty input and raise "
            "a ValueError for invalid arguments."
        )
        for k in range(10):
            sid = f"inst{i:08d}.{k}"
            if shared and rng.random() < 0.05:
                response, functions, classes = rng.choice(shared)
            else:
                functions, classes = _names(rng)
                response = _response(rng, functions, classes)
                if len(shared) < 1000:
                    shared.append((response, functions, classes))
            yield sid, instruction, response, functions, classes
            if i * 10 + k + 1 >= n:
                return


def _names(rng: random.Random) -> tuple[list[str], list[str]]:
    if rng.random() < 0.1:
        return [], []
    common = rng.random() < 0.3
    first = rng.choice(COMMON_FUNCTIONS) if common else f"compute_{rng.randrange(10**9)}"
    functions = [first] + ([f"helper_{rng.randrange(10**6)}"] if rng.random() < 0.3 else [])
    classes = []
    if rng.random() < 0.2:
        classes = [rng.choice(COMMON_CLASSES) if common else f"Box{rng.randrange(10**6)}"]
    return functions, classes


def _response(rng: random.Random, functions: list[str], classes: list[str]) -> str:
    lines = [
        f"class {c}:\n    items: list = []\n    limit = {rng.randrange(100)}\n" for c in classes
    ]
    lines += [
        f"def {f}(values, factor={rng.randrange(100)}):\n"
        f"    result = [v * factor for v in values if v]\n    return sum(result)\n"
        for f in functions
    ]
    if not lines:
        lines = [f"values = [{rng.randrange(100)}, 2, 3]\nprint(sum(values))\n"]
    code = "\n".join(lines)
    return (
        "We iterate over the values once, skipping empty ones, and multiply each by the factor; "
        f"the total is the answer. This runs in linear time.\n\n```python\n{code}```"
    )


def compact_key(sid: str, instruction: str, response: str, fns: list[str], cls: list[str]) -> bytes:
    """`selection.selection_key` with the names known, without parsing (checked against it)."""
    squash = selection.squash_name
    return b"".join(
        (
            selection.rank_bytes(sid),
            selection.text_digest(instruction),
            selection.text_digest(response),
            selection.names_digest(frozenset(map(squash, fns))),
            selection.names_digest(frozenset(map(squash, cls))),
        )
    )


def plain_key(sid: str, instruction: str, response: str, fns: list[str], cls: list[str]) -> tuple:
    squash = selection.squash_name
    return (
        selection.shuffle_rank(sid),
        sid,
        selection.whitespace_free(instruction),
        selection.whitespace_free(response),
        frozenset(map(squash, fns)),
        frozenset(map(squash, cls)),
    )


def generate(n: int, workdir: Path) -> tuple[Path, Path]:
    keys_path, plain_path = workdir / f"keys-{n}.bin", workdir / f"plain-{n}.pkl"
    if keys_path.exists() and plain_path.exists():
        return keys_path, plain_path
    started = time.perf_counter()
    keys_tmp, plain_tmp = keys_path.with_suffix(".tmp"), plain_path.with_suffix(".tmp")
    with keys_tmp.open("wb") as keys_out, plain_tmp.open("wb") as plain_out:
        batch: list[tuple] = []
        for i, (sid, instruction, response, fns, cls) in enumerate(synthetic(n)):
            key = compact_key(sid, instruction, response, fns, cls)
            if i < 2000:
                assert key == selection.selection_key(sid, instruction, response), sid
            keys_out.write(key)
            batch.append(plain_key(sid, instruction, response, fns, cls))
            if len(batch) == BATCH:
                pickle.dump(batch, plain_out, protocol=pickle.HIGHEST_PROTOCOL)
                batch = []
        if batch:
            pickle.dump(batch, plain_out, protocol=pickle.HIGHEST_PROTOCOL)
    keys_tmp.rename(keys_path)  # only complete files are reused
    plain_tmp.rename(plain_path)
    print(f"generated {n} samples in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return keys_path, plain_path


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker_compact(path: Path) -> int:
    table = selection.KeyTable()
    with path.open("rb") as handle:
        while chunk := handle.read(BATCH * selection.KEY_WIDTH):
            table.add(chunk)
    verdicts = (v for _, v in selection.select_in_order(table.in_order()))
    return sum(v is selection.Verdict.KEPT for v in verdicts)


def worker_plain(path: Path) -> int:
    rows: list[tuple] = []
    with path.open("rb") as handle:
        while True:
            try:
                rows.extend(pickle.load(handle))
            except EOFError:
                break
    rows.sort(key=lambda r: (r[0], r[1]))
    seen_keys: set[str] = set()
    seen_names: set[frozenset[str]] = set()
    kept = 0
    for _, _, key_i, key_r, fns, cls in rows:
        if key_i in seen_keys or key_r in seen_keys:
            continue
        if (fns and fns in seen_names) or (cls and cls in seen_names):
            continue
        seen_names.update((fns, cls))
        seen_keys.update((key_i, key_r))
        kept += 1
    return kept


def run_worker(form: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "_worker", form, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_worker":
        start_rss = _rss_mib()
        started = time.perf_counter()
        work = worker_compact if sys.argv[2] == "compact" else worker_plain
        kept = work(Path(sys.argv[3]))
        wall = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"wall_s": wall, "peak_mib": peak, "start_mib": start_rss, "kept": kept}))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/bench_selection")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    keys_path, plain_path = generate(args.samples, workdir)
    results: dict[str, list[dict]] = {"compact": [], "plain": []}
    for _ in range(args.runs):
        results["compact"].append(run_worker("compact", keys_path))
        results["plain"].append(run_worker("plain", plain_path))
    kept = {r["kept"] for rs in results.values() for r in rs}
    assert len(kept) == 1, f"the two forms disagree: {kept}"
    print(f"samples: {args.samples}  runs: {args.runs}  kept: {kept.pop()}  python: "
          f"{sys.version.split()[0]}  cpus: {os.cpu_count()}")  # fmt: skip
    medians = {}
    for form, label in (("compact", "compact keys (80 B)"), ("plain", "plain keys (baseline)")):
        walls = [r["wall_s"] for r in results[form]]
        peaks = [r["peak_mib"] for r in results[form]]
        held = [r["peak_mib"] - r["start_mib"] for r in results[form]]
        medians[form] = (statistics.median(walls), statistics.median(peaks))
        print(
            f"{label:24s} wall {statistics.median(walls):6.2f} s  peak RSS "
            f"{statistics.median(peaks):7.0f} MiB (above start {statistics.median(held):6.0f})"
            f"  runs: {[round(w, 2) for w in walls]} {[round(p) for p in peaks]}"
        )
    print(
        f"ratio plain / compact: wall {medians['plain'][0] / medians['compact'][0]:.2f}  "
        f"peak RSS {medians['plain'][1] / medians['compact'][1]:.2f}"
    )


if __name__ == "__main__":
    main()
