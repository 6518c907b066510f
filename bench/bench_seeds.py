"""Seed extraction throughput: the pure functions vs the Beam stage on FnApiRunner.

    .venv/bin/python bench/bench_seeds.py [--runs 5] [--input SHARD] [-- PIPELINE_ARGS...]

Both sides process the same files (the bundled shard by default). The pure side runs
check_file + extract_functions + check_seed in one process; the Beam side runs the whole
seed stage (read, extract, filter, exact dedup, write) on FnApiRunner with one worker.
Runs alternate between the two sides. Prints files per wall-clock second and per CPU second
of this process (FnApiRunner's one worker runs in it; CPU time is steady on a shared VM where
wall time is not) for each, medians of --runs, and their ratios.
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

Rates = tuple[float, float]  # files per wall second, files per CPU second


def _rates(n_files: int, wall: float, cpu: float) -> Rates:
    return n_files / wall, n_files / cpu


def pure(contents: list[str]) -> Rates:
    wall, cpu = time.perf_counter(), time.process_time()
    for text in contents:
        if check_file(text, True, len(text)) is not None:
            continue
        for fn in extract_functions(text).functions:
            check_seed(fn.text)
    return _rates(len(contents), time.perf_counter() - wall, time.process_time() - cpu)


def beam_stage(shard: str, n_files: int, extra: list[str]) -> Rates:
    with tempfile.TemporaryDirectory() as out:
        wall, cpu = time.perf_counter(), time.process_time()
        run(
            [
                f"--input={shard}",
                f"--output_dir={out}",
                "--to_stage=seeds",
                "--runner=FnApiRunner",
                "--direct_num_workers=1",
                *extra,
            ]
        )
        return _rates(n_files, time.perf_counter() - wall, time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--input", default=bundled_shard())
    parser.add_argument("pipeline_args", nargs="*", help="passed to the Beam stage's run")
    args = parser.parse_args()
    contents = pq.read_table(args.input, columns=["content"]).column("content").to_pylist()
    pure_rates: list[Rates] = []
    beam_rates: list[Rates] = []
    for _ in range(args.runs):
        pure_rates.append(pure(contents))
        beam_rates.append(beam_stage(args.input, len(contents), args.pipeline_args))
    print(
        f"files: {len(contents)}  runs: {args.runs}  python: {sys.version.split()[0]}  "
        f"pipeline args: {args.pipeline_args}"
    )
    medians = {}
    for name, rates in (
        ("pure functions (1 core)", pure_rates),
        ("Beam stage (FnApiRunner, 1 worker)", beam_rates),
    ):
        wall = statistics.median(r[0] for r in rates)
        cpu = statistics.median(r[1] for r in rates)
        medians[name] = wall, cpu
        print(
            f"{name}: {wall:7.1f} files/s {cpu:7.1f} files/CPU-s   "
            f"runs (wall): {[round(r[0], 1) for r in rates]}"
        )
    (p_wall, p_cpu), (b_wall, b_cpu) = medians.values()
    print(f"ratio Beam / pure: {b_wall / p_wall:.3f} (wall)  {b_cpu / p_cpu:.3f} (CPU)")


if __name__ == "__main__":
    main()
