"""Seed stage throughput: the Beam stage with N worker processes vs a plain process pool.

    .venv/bin/python bench/bench_seeds.py --input SHARD [--input SHARD2] [--runs 3] [--workers 2]

Build full-size shards first (about 33-45k files, 525-650 MB of content):

    python scripts/build_seed_shard.py --full --rows_per_group 2000 --out /tmp/full-2000.parquet
    python scripts/build_seed_shard.py --full --rows_per_group 0 --out /tmp/full-1rg.parquet

Both sides do the same work on the same shard, in the same run, alternating:
- pool: this process streams the shard with the pipeline's reader (`stack_io`) and hands
  chunks of files to `multiprocessing.Pool(N)`, whose workers run the stage's file checks,
  extraction and seed filters (`core.seeds`).
- Beam: `--to_stage seeds` on FnApiRunner with N worker processes (multi_processing): read,
  extract, filter, exact dedup, write seeds and rejections (near-dedup and decontamination
  off: the pool has no equivalent).
Prints files per wall second and per CPU second (all processes of the side: on a shared
machine CPU time is steadier than wall time), peak RSS of the largest worker process (sampled
every 0.2 s), medians of --runs, and the ratios Beam / pool.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import psutil

from beam_pipeline import stack_io
from beam_pipeline.core.seeds import check_file, check_seed, extract_functions
from beam_pipeline.options import bundled_shard

CHUNK = 64


class PeakRss:
    """Samples this process's descendants: the peak RSS of the largest one, and the CPU
    seconds of all of them plus this process (steadier than wall time on a shared machine)."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.peak: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.interval_s):
            for child in me.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                    times = child.cpu_times()
                except psutil.Error:
                    continue
                self.peak[child.pid] = max(self.peak.get(child.pid, 0), rss)
                self.cpu[child.pid] = times.user + times.system

    def __enter__(self) -> PeakRss:
        self._own = time.process_time()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_s = time.process_time() - self._own + sum(self.cpu.values())

    def largest_mb(self) -> float:
        return max(self.peak.values(), default=0) / 2**20


def _work(chunk: list[tuple[str, bool, int]]) -> tuple[int, int]:
    """The stage's per-file work: file checks, extraction, seed filters."""
    kept = 0
    for text, valid, size in chunk:
        if check_file(text, valid, size) is not None:
            continue
        extraction = extract_functions(text)
        if extraction.reason is not None:
            continue
        kept += sum(check_seed(fn.text) is None for fn in extraction.functions)
    return len(chunk), kept


def _chunks(shard: str) -> Iterator[list[tuple[str, bool, int]]]:
    chunk: list[tuple[str, bool, int]] = []
    for task in stack_io.tasks_for_file(shard):
        for source in stack_io.read_task(task):
            chunk.append((source.content, source.valid_utf8, source.size_bytes))
            if len(chunk) == CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def pool_side(shard: str, workers: int) -> tuple[float, float, int, int, float]:
    with PeakRss() as rss, multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(abs, range(workers))  # workers started before the clock
        start = time.perf_counter()
        files = kept = 0
        for n, k in pool.imap_unordered(_work, _chunks(shard)):
            files, kept = files + n, kept + k
        wall = time.perf_counter() - start
        time.sleep(2 * rss.interval_s)  # a last sample of the workers' CPU times
    return files / wall, rss.largest_mb(), files, kept, files / rss.cpu_s


def beam_side(shard: str, workers: int, extra: list[str]) -> tuple[float, float, int, int, float]:
    from beam_pipeline.main import run

    with tempfile.TemporaryDirectory() as out, PeakRss() as rss:
        start = time.perf_counter()
        report = run(
            [
                f"--input={shard}",
                f"--output_dir={out}",
                "--to_stage=seeds",
                "--seed_dedup_threshold=0",
                "--decontam_benchmarks=none",
                "--runner=FnApiRunner",
                f"--direct_num_workers={workers}",
                "--direct_running_mode=multi_processing",
                *extra,
            ]
        )
        wall = time.perf_counter() - start
    stages = report["stages"]
    files = stages["read"]["out"]
    return files / wall, rss.largest_mb(), files, stages["seeds.filter"]["out"], files / rss.cpu_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", action="append", default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("pipeline_args", nargs="*", help="more flags for the Beam side")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}  cpus {psutil.cpu_count()}  workers {args.workers}")
    for shard in args.input or [bundled_shard()]:
        meta = stack_io.read_footer(shard)
        print(f"\n{shard}: {meta.num_rows} files in {meta.num_row_groups} row groups")
        results: dict[str, list[tuple[float, float, int, int, float]]] = {"pool": [], "beam": []}
        for i in range(args.runs):
            for side in ("pool", "beam"):
                if side == "pool":
                    r = pool_side(shard, args.workers)
                else:
                    r = beam_side(shard, args.workers, args.pipeline_args)
                results[side].append(r)
                print(
                    f"  run {i + 1} {side}: {r[0]:6.1f} files/s {r[4]:6.1f} files/CPU-s"
                    f"  peak worker RSS {r[1]:6.0f} MB"
                    f"  files {r[2]}  seeds passing filters {r[3]}",
                    flush=True,
                )
        med = {side: statistics.median(r[0] for r in rs) for side, rs in results.items()}
        cpu = {side: statistics.median(r[4] for r in rs) for side, rs in results.items()}
        rss = {side: max(r[1] for r in rs) for side, rs in results.items()}
        print(
            f"  median of {args.runs}: pool {med['pool']:.1f} files/s {cpu['pool']:.1f} files/CPU-s"
            f" (peak {rss['pool']:.0f} MB)  Beam {med['beam']:.1f} files/s"
            f" {cpu['beam']:.1f} files/CPU-s (peak {rss['beam']:.0f} MB)"
            f"  ratio Beam / pool {med['beam'] / med['pool']:.2f} (wall)"
            f" {cpu['beam'] / cpu['pool']:.2f} (CPU)"
        )


if __name__ == "__main__":
    main()
