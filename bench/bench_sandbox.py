"""Sandbox throughput: fork-server pool against one bubblewrap process per program.

    .venv/bin/python bench/bench_sandbox.py [--workers N] [--runs 600] [--repeats 5] [--work N]

All variants run the same trivial program with full isolation, `--workers` at a time (default:
the pool's default, twice the cores), and are interleaved within each repeat so machine load
hits them alike. Reported per variant, as the
median over repeats: runs/s (wall clock), and CPU milliseconds per run summed over every
process involved (this process, supervisors, bwrap, programs). CPU time comes from a cpuacct
cgroup holding this process and everything it starts (root only). On a shared machine the
wall clock depends on what else runs; CPU per run much less, and `cores / CPU per run` is the
throughput the variant can reach on otherwise idle cores.

- pool: `SandboxPool` with its defaults, `run_many`: the program names no pandas, so it runs
  in the light tier (numpy pre-imported). Its runs hold the machine's slots (one per core).
- pool-unbounded: the same with a budget as large as its supervisors (the slots of a private
  directory): what the machine-wide bound costs on this program.
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
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox_image import SandboxConfig, SandboxPool, make_plan, run_program
from sandbox_image.executor import default_workers
from sandbox_image.launch import bwrap_args

PROGRAM = "assert sum(range(10)) == 45\n"
PANDAS_PROGRAM = "# pandas\n" + PROGRAM


class CpuAccount:
    """CPU time of this process and every process it starts, orphans included.

    A cgroup-v1 cpuacct group keeps counting processes that bwrap leaves to init, which
    getrusage(RUSAGE_CHILDREN) cannot see. Needs root and a writable cpuacct hierarchy;
    without them CPU is not reported.
    """

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self) -> None:
        self.path: Path | None = None
        try:
            path = self.ROOT / f"sandbox-bench-{os.getpid()}"
            path.mkdir()
            (path / "cgroup.procs").write_text(str(os.getpid()))
            self.path = path
        except OSError as exc:
            print(f"CPU accounting unavailable: {exc}")

    def seconds(self) -> float:
        if self.path is None:
            return float("nan")
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def close(self) -> None:
        if self.path is None:
            return
        try:
            (self.ROOT / "cgroup.procs").write_text(str(os.getpid()))
            for _ in range(50):  # orphans reaped by init leave the group a moment later
                try:
                    self.path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        except OSError as exc:
            print(f"could not remove {self.path}: {exc}")


def measure(run: Callable[[], None], runs: int, account: CpuAccount) -> tuple[float, float]:
    """(runs/s, CPU ms per run) of one batch."""
    cpu = account.seconds()
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    cpu = account.seconds() - cpu
    return runs / elapsed, cpu / runs * 1000


def pool_batch(pool: SandboxPool, runs: int, program: str) -> Callable[[], None]:
    def run() -> None:
        results = pool.run_many([program] * runs)
        assert all(r.passed for r in results), {r.status for r in results}

    return run


def parallel_batch(job: Callable[[], bool], runs: int, workers: int) -> Callable[[], None]:
    def run() -> None:
        with concurrent.futures.ThreadPoolExecutor(workers) as threads:
            assert all(threads.map(lambda _: job(), range(runs)))

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workers", type=int, default=None, help="concurrency (default: the pool's default)"
    )
    parser.add_argument("--runs", type=int, default=600, help="programs per pool measurement")
    parser.add_argument("--process-runs", type=int, default=120, help="per-process measurements")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", default="bwrap", choices=("bwrap", "rlimits"))
    parser.add_argument(
        "--work", type=int, default=0, help="a program that sums N squares instead (CPU work)"
    )
    args = parser.parse_args()
    program = PROGRAM if not args.work else f"assert sum(i * i for i in range({args.work})) >= 0\n"
    pandas_program = "# pandas\n" + program

    if args.workers is None:
        args.workers = default_workers()
    config = SandboxConfig(backend=args.backend)
    plan = make_plan(config)
    cores = os.cpu_count() or 1
    print(f"machine: {cores} cpus, {platform.machine()}, python {platform.python_version()}")
    print(f"sandbox: {plan.describe()}")
    print(f"load average before: {os.getloadavg()}")

    account = CpuAccount()  # before any sandbox starts, so that all of them are counted
    started = time.perf_counter()
    pool = SandboxPool(config, workers=args.workers)
    pool_start = time.perf_counter() - started
    bare = SandboxPool(config.replace(preload=()), workers=args.workers)
    unbounded = SandboxPool(
        config.replace(machine_slots=2 * args.workers, slots_dir=tempfile.mkdtemp()),
        workers=args.workers,
    )
    print(f"machine slots: {pool.slots.count} ({pool.slots.directory})")

    def one_shot() -> bool:
        return run_program(program, config).passed

    lean = bwrap_args(
        plan.interpreter,
        privileged=plan.privileged,
        scratch_mb=config.scratch_mb,
        command=[plan.interpreter.path, "-I", "-S", "-c", program],
    )

    def bwrap_python() -> bool:
        return subprocess.run(lean, capture_output=True, check=False).returncode == 0

    variants = {
        "pool": (pool_batch(pool, args.runs, program), args.runs),
        "pool-unbounded": (pool_batch(unbounded, args.runs, program), args.runs),
        "pool-pandas": (pool_batch(pool, args.runs, pandas_program), args.runs),
        "pool-bare": (pool_batch(bare, args.runs, program), args.runs),
        "one-shot": (parallel_batch(one_shot, args.process_runs, args.workers), args.process_runs),
        "bwrap-python": (
            parallel_batch(bwrap_python, args.process_runs, args.workers),
            args.process_runs,
        ),
    }
    if args.backend != "bwrap":
        del variants["bwrap-python"]
    rates: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    try:
        pool_batch(pool, 50, program)()  # warm-up; starts the full tier too
        pool_batch(pool, 50, pandas_program)()
        pool_batch(bare, 50, program)()
        pool_batch(unbounded, 50, program)()
        for _ in range(args.repeats):
            for name, (run, runs) in variants.items():
                rate, cpu = measure(run, runs, account)
                rates[name].append(rate)
                cpus[name].append(cpu)
    finally:
        pool.close()
        bare.close()
        unbounded.close()
        account.close()
    print(f"load average after: {os.getloadavg()}")
    print(f"pool start-up ({args.workers} supervisors, numpy): {pool_start:.2f} s")
    print(f"workers: {args.workers}  repeats: {args.repeats}  program: {program.strip()!r}")
    header = f"{'variant':14} {'runs/s':>8} {'CPU ms/run':>11} {'idle-core capacity':>19}"
    print(header + "  runs/s per repeat")
    rate = {name: statistics.median(v) for name, v in rates.items()}
    cpu = {name: statistics.median(v) for name, v in cpus.items()}
    for name in variants:
        per_repeat = ", ".join(f"{v:.0f}" for v in rates[name])
        capacity = cores * 1000 / cpu[name]
        print(f"{name:14} {rate[name]:8.1f} {cpu[name]:11.2f} {capacity:15.0f} /s  [{per_repeat}]")
    print(f"pool / pool-unbounded: {rate['pool'] / rate['pool-unbounded']:.2f}x runs/s")
    for baseline in ("one-shot", "bwrap-python"):
        if baseline in rate:
            print(
                f"pool / {baseline}: {rate['pool'] / rate[baseline]:.1f}x runs/s, "
                f"{cpu[baseline] / cpu['pool']:.1f}x less CPU per run"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
