"""Seed extraction throughput: the pure functions vs the Beam stage on FnApiRunner.

    .venv/bin/python bench/bench_seeds.py [--runs 5] [--input SHARD]

Both sides process the same files (the bundled shard by default). The pure side runs
check_file + extract_functions + check_seed in one process; the Beam side runs the whole
seed stage (read, extract, filter, exact dedup, write) on FnApiRunner with one worker.
Prints files/s for each (median of --runs) and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import pyarrow.parquet as pq

from beam_pipeline.core.seeds import check_file, check_seed, extract_functions
from beam_pipeline.main import run
from beam_pipeline.options import bundled_shard


def pure(contents: list[str]) -> float:
    start = time.perf_counter()
    for text in contents:
        if check_file(text, True, len(text)) is not None:
            continue
        for fn in extract_functions(text).functions:
            check_seed(fn.text)
    return len(contents) / (time.perf_counter() - start)


def beam_stage(shard: str, n_files: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run(
            [
                f"--input={shard}",
                f"--output_dir={out}",
                "--to_stage=seeds",
                "--runner=FnApiRunner",
                "--direct_num_workers=1",
            ]
        )
        return n_files / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--input", default=bundled_shard())
    args = parser.parse_args()
    contents = pq.read_table(args.input, columns=["content"]).column("content").to_pylist()
    pure_rates = [pure(contents) for _ in range(args.runs)]
    beam_rates = [beam_stage(args.input, len(contents)) for _ in range(args.runs)]
    p, b = statistics.median(pure_rates), statistics.median(beam_rates)
    print(f"files: {len(contents)}  runs: {args.runs}  python: {sys.version.split()[0]}")
    print(f"pure functions (1 core): {p:8.1f} files/s   runs: {[round(r, 1) for r in pure_rates]}")
    print(
        f"Beam stage (FnApiRunner, 1 worker): {b:8.1f} files/s   runs: "
        f"{[round(r, 1) for r in beam_rates]}"
    )
    print(f"ratio Beam / pure: {b / p:.3f}")


if __name__ == "__main__":
    main()
