"""Sandbox throughput: fork-server pool against one bubblewrap process per program.

    .venv/bin/python bench/bench_sandbox.py [--workers 2] [--runs 600] [--repeats 5]

All variants run the same trivial program with full isolation, `--workers` at a time, and are
interleaved within each repeat so machine load hits them alike. Reported: median runs/s per
variant and the ratio of the fork server to the per-process baselines.

- pool: `SandboxPool` with its defaults, `run_many`: the program names no pandas, so it runs
  in the light tier (numpy pre-imported).
- pool-pandas: the same program with a `# pandas` comment: the full tier (numpy and pandas
  pre-imported), i.e. what a fork of the pandas image costs.
- pool-bare: a pool with nothing pre-imported.
- one-shot: `run_program`: one bwrap sandbox + supervisor per program (same isolation).
- bwrap-python: the least a per-process design can cost: the same bwrap namespaces and
  mounts around `python -I -S -c PROGRAM`, no uid drop, rlimits or output capture.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox_image import SandboxConfig, SandboxPool, make_plan, run_program
from sandbox_image.launch import bwrap_args

PROGRAM = "assert sum(range(10)) == 45\n"


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def bench_pool(pool: SandboxPool, runs: int, program: str = PROGRAM) -> float:
    start = time.perf_counter()
    results = pool.run_many([program] * runs)
    elapsed = time.perf_counter() - start
    assert all(r.passed for r in results), {r.status for r in results}
    return _rate(runs, elapsed)


def bench_parallel(job: object, runs: int, workers: int) -> float:
    with concurrent.futures.ThreadPoolExecutor(workers) as threads:
        start = time.perf_counter()
        outcomes = list(threads.map(lambda _: job(), range(runs)))  # type: ignore[operator]
        elapsed = time.perf_counter() - start
    assert all(outcomes)
    return _rate(runs, elapsed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=600, help="programs per pool measurement")
    parser.add_argument("--process-runs", type=int, default=120, help="per-process measurements")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", default="bwrap", choices=("bwrap", "rlimits"))
    args = parser.parse_args()

    config = SandboxConfig(backend=args.backend)
    plan = make_plan(config)
    print(
        f"machine: {os.cpu_count()} cpus, {platform.machine()}, python {platform.python_version()}"
    )
    print(f"sandbox: {plan.describe()}")
    print(f"load average before: {os.getloadavg()}")

    started = time.perf_counter()
    pool = SandboxPool(config, workers=args.workers)
    pool_start = time.perf_counter() - started
    bare = SandboxPool(config.replace(preload=()), workers=args.workers)

    def one_shot() -> bool:
        return run_program(PROGRAM, config).passed

    lean = bwrap_args(
        plan.interpreter,
        privileged=plan.privileged,
        scratch_mb=config.scratch_mb,
        command=[plan.interpreter.path, "-I", "-S", "-c", PROGRAM],
    )

    def bwrap_python() -> bool:
        return subprocess.run(lean, capture_output=True, check=False).returncode == 0

    variants = {
        "pool": lambda: bench_pool(pool, args.runs),
        "pool-pandas": lambda: bench_pool(pool, args.runs, "# pandas\n" + PROGRAM),
        "pool-bare": lambda: bench_pool(bare, args.runs),
        "one-shot": lambda: bench_parallel(one_shot, args.process_runs, args.workers),
        "bwrap-python": lambda: bench_parallel(bwrap_python, args.process_runs, args.workers),
    }
    if args.backend != "bwrap":
        del variants["bwrap-python"]
    rates: dict[str, list[float]] = {name: [] for name in variants}
    try:
        bench_pool(pool, 50)  # warm-up, and start the full tier
        bench_pool(pool, 50, "# pandas\n" + PROGRAM)
        for _ in range(args.repeats):
            for name, measure in variants.items():
                rates[name].append(measure())
    finally:
        pool.close()
        bare.close()
    print(f"load average after: {os.getloadavg()}")
    print(f"pool start-up ({args.workers} supervisors, numpy): {pool_start:.2f} s")
    print(f"workers: {args.workers}  repeats: {args.repeats}  program: {PROGRAM.strip()!r}")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:13} {medians[name]:7.1f} runs/s   runs: [{runs}]")
    for baseline in ("one-shot", "bwrap-python"):
        if baseline in medians:
            print(f"ratio pool / {baseline}: {medians['pool'] / medians[baseline]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
