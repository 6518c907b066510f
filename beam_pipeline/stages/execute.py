"""ExecuteSamples: Sample -> Execution (method.md §3).

Input: `Sample` records (response + tests). Each sample's program is built by
`core.program.build_program` (every Python fenced block; the `__main__` section cut only when
its block really calls `input(`), the samples are redistributed across workers, batched, and run
in the sandbox: one fork-server `SandboxPool` per worker process (built in `DoFn.setup`, shared
by the DoFn instances of that process), so a batch keeps every supervisor busy.

Output (main): one `Execution` per sample that ran, whatever its verdict: passed, failed,
timeout, memory, crashed. Selection keeps the passing ones. A timeout is a verdict only when
the program had its time: its clock counts its own time, not the time the machine kept it
waiting for a CPU (method.md §3; docs/sandbox.md).
Rejections (`rejected/execution/`): `no_code` (no Python block in the response or tests).
Dead letters (`errors/execution/`): samples whose sandbox kept failing (`sandbox_error` after
the pool's retries on fresh supervisors) or whose program stayed `starved` (kept off the CPU
past its wall clock on every attempt): an infrastructure outcome is never a failed sample.

Execution cache (optional, any fsspec URL): `CACHE/<key[:2]>/<key>.json` holds the result of
a program, keyed by the program's SHA-256 and a fingerprint of the limits, backend and
interpreter version. A rerun, or a duplicate program in the same run, is not executed again.
Infrastructure outcomes (sandbox_error, starved) are never cached.

Metrics (namespace `selfcodealign`): execution_<status> per status, execution_cache_hit,
execution_cache_miss, execution_cache_error, execution_duration_ms (distribution).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from enum import StrEnum

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from beam_pipeline.config import ExecutionConfig
from beam_pipeline.core.program import build_program, program_sha
from beam_pipeline.records import DeadLetter, Execution, Record, Rejection, Sample
from beam_pipeline.stages.common import (
    METRICS_NAMESPACE,
    Accounting,
    StageFn,
    StageOutputs,
    apply_stage_fn,
    merge_outputs,
)
from sandbox_image import (
    SANDBOX_ERROR,
    STATUSES,
    VERDICTS,
    ExecutionResult,
    SandboxConfig,
    SandboxPool,
)

STAGE = "execution"
# Bumped when what makes a verdict changes: results cached under another rule are not reused.
VERDICT_RULES = "own-time-1"
DEFAULT_SANDBOX = ExecutionConfig().sandbox_config()

log = logging.getLogger(__name__)


class ExecuteReason(StrEnum):
    NO_CODE = "no_code"


class BuildProgramFn(StageFn):
    """Sample -> (Sample, program source), or a `no_code` rejection."""

    def handle(self, sample: Sample) -> Iterator[tuple[Sample, str] | Rejection]:
        program = build_program(sample.response, sample.tests)
        if not program.source:
            detail = f"{program.skipped_blocks} non-Python blocks" if program.skipped_blocks else ""
            yield Rejection.of(STAGE, ExecuteReason.NO_CODE, sample, detail)
            return
        yield sample, program.source


class ExecutionCache:
    """Program results on an fsspec path; every failure degrades to a miss, never an error."""

    def __init__(self, root: str, fingerprint: str) -> None:
        import fsspec

        self.root = root.rstrip("/")
        self.fingerprint = fingerprint
        self.fs, self.base = fsspec.core.url_to_fs(self.root)

    def key(self, source: str) -> str:
        return hashlib.sha256(f"{self.fingerprint}\n{program_sha(source)}".encode()).hexdigest()

    def path(self, key: str) -> str:
        return f"{self.base}/{key[:2]}/{key}.json"

    def get_many(self, keys: Sequence[str]) -> dict[str, ExecutionResult]:
        paths = {self.path(k): k for k in keys}
        found = self.fs.cat(list(paths), on_error="omit")
        out = {}
        for path, data in found.items():
            try:
                out[paths[path]] = ExecutionResult.from_dict(json.loads(data))
            except (ValueError, TypeError, KeyError):
                continue  # a damaged entry is a miss
        return out

    def put_many(self, results: dict[str, ExecutionResult]) -> None:
        for key in results:
            self.fs.makedirs(os.path.dirname(self.path(key)), exist_ok=True)
        self.fs.pipe({self.path(k): json.dumps(r.to_dict()).encode() for k, r in results.items()})


def sandbox_fingerprint(config: SandboxConfig, pool: SandboxPool) -> str:
    """What a verdict depends on besides the program: limits, backend, interpreter."""
    fields = {
        "rules": VERDICT_RULES,
        "timeout_s": config.timeout_s,
        "max_wall_factor": config.max_wall_factor,
        "memory_mb": config.memory_mb,
        "cpu": config.cpu_limit_s,
        "nproc": config.max_processes,
        "nofile": config.max_open_files,
        "fsize": config.max_file_mb,
        "scratch": config.scratch_mb,
        "output": config.max_output_bytes,
        "backend": pool.backend,
        "python": pool.plan.interpreter.version,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


# One handle for every stage that runs programs (execution, cross-check): one pool per process.
SANDBOX_POOLS = shared.Shared()


class _SharedPool:
    """Weak-referenceable holder so `shared.Shared` can keep one pool per worker process."""

    def __init__(self, config: SandboxConfig, workers: int | None) -> None:
        self.pool = SandboxPool(config, workers=workers)


class SandboxBatchFn(StageFn):
    """Runs a batch's programs on the worker process's shared sandbox pool, through the
    execution cache; a subclass turns each verdict into its own output. Counters are named
    `<metric>_<status>`, `<metric>_cache_hit`, `_cache_miss`, `_cache_error`, `_duration_ms`."""

    def __init__(
        self,
        stage: str,
        metric: str,
        sandbox: SandboxConfig,
        workers: int | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(stage)
        self.sandbox = sandbox
        self.workers = workers
        self.cache_dir = cache_dir
        self._shared = SANDBOX_POOLS
        self._holder: _SharedPool | None = None
        self._cache: ExecutionCache | None = None
        self._status = {s: Metrics.counter(METRICS_NAMESPACE, f"{metric}_{s}") for s in STATUSES}
        self._hit = Metrics.counter(METRICS_NAMESPACE, f"{metric}_cache_hit")
        self._miss = Metrics.counter(METRICS_NAMESPACE, f"{metric}_cache_miss")
        self._cache_error = Metrics.counter(METRICS_NAMESPACE, f"{metric}_cache_error")
        self._duration = Metrics.distribution(METRICS_NAMESPACE, f"{metric}_duration_ms")

    def setup(self) -> None:
        tag = f"{self.sandbox!r}/{self.workers}"
        holder = self._shared.acquire(lambda: _SharedPool(self.sandbox, self.workers), tag)
        self._holder = holder
        pool = holder.pool
        log.info(
            "%s: %s, %d supervisors, %d machine slots",
            self.stage,
            pool.plan.describe(),
            pool.workers,
            pool.slots.count,
        )
        if self.cache_dir:
            self._cache = ExecutionCache(self.cache_dir, sandbox_fingerprint(self.sandbox, pool))

    def _cached(self, keys: Sequence[str]) -> dict[str, ExecutionResult]:
        if self._cache is None:
            return {}
        try:
            return self._cache.get_many(keys)
        except Exception:  # the cache only ever saves work
            log.warning("execution cache read failed", exc_info=True)
            self._cache_error.inc()
            return {}

    def _store(self, results: dict[str, ExecutionResult]) -> None:
        if self._cache is None or not results:
            return
        try:
            self._cache.put_many(results)
        except Exception:  # a failed write costs a rerun, nothing else
            log.warning("execution cache write failed", exc_info=True)
            self._cache_error.inc()

    def _results(self, sources: list[str]) -> dict[str, ExecutionResult]:
        """source -> result for every distinct source (cache first, then the pool)."""
        keys = {s: self._cache.key(s) if self._cache else program_sha(s) for s in sources}
        hits = self._cached(list(dict.fromkeys(keys.values())))
        results = {s: hits[k] for s, k in keys.items() if k in hits}
        todo = [s for s in dict.fromkeys(sources) if s not in results]
        self._miss.inc(len(todo))
        self._hit.inc(len(sources) - len(todo))  # cached, or a duplicate within the batch
        assert self._holder is not None
        fresh = dict(zip(todo, self._holder.pool.run_many(todo), strict=True))
        results.update(fresh)
        self._store({keys[s]: r for s, r in fresh.items() if r.is_verdict})
        return results

    def verdicts(
        self, batch: Sequence[tuple[Record, str]]
    ) -> Iterator[tuple[Record, str, ExecutionResult] | DeadLetter]:
        """(record, source, result) for each program that got a verdict; a dead letter for
        the record of each that did not (sandbox error, starved after the pool's retries), or
        for every record when the whole batch failed."""
        try:
            results = self._results([source for _, source in batch])
        except Exception as exc:  # every record of the batch gets its letter
            for record, _ in batch:
                yield self._dead_letter(record, f"{type(exc).__name__}: {exc}")
            return
        for record, source in batch:
            result = results[source]
            self._status[result.status].inc()
            if not result.is_verdict:
                yield self._dead_letter(record, result)
                continue
            self._duration.update(int(result.duration_s * 1000))
            yield record, source, result

    def _dead_letter(self, record: Record, outcome: ExecutionResult | str) -> DeadLetter:
        if isinstance(outcome, str):
            error = f"sandbox_error: {outcome}"
        elif outcome.status == SANDBOX_ERROR:
            error = f"sandbox_error: {outcome.stderr}"
        else:
            error = (
                f"{outcome.status}: {outcome.cpu_s:.2f} s on a CPU, "
                f"{outcome.run_wait_s or 0:.2f} s waiting for one, {outcome.duration_s:.2f} s "
                "wall clock"
            )
        return DeadLetter.of(self.stage, record, error)


class RunProgramsFn(SandboxBatchFn):
    """A batch of (Sample, source) -> Execution records (dead letters for sandbox errors)."""

    def __init__(
        self, sandbox: SandboxConfig, workers: int | None = None, cache_dir: str | None = None
    ) -> None:
        super().__init__(STAGE, STAGE, sandbox, workers, cache_dir)

    def handle(self, batch: list[tuple[Sample, str]]) -> Iterator[Execution | DeadLetter]:
        for outcome in self.verdicts(batch):
            if isinstance(outcome, DeadLetter):
                yield outcome
                continue
            sample, source, result = outcome
            assert isinstance(sample, Sample)
            yield sample.derive(
                Execution,
                program_sha=program_sha(source),
                status=result.status,
                exit_code=result.exit_code,
                signal=result.signal,
                duration_s=result.duration_s,
                stdout=result.stdout,
                stderr=result.stderr,
                backend=result.backend,
            )


class ExecuteSamples(beam.PTransform):
    """Sample -> Execution; see the module docstring for outputs, cache and metrics."""

    def __init__(
        self,
        sandbox: SandboxConfig = DEFAULT_SANDBOX,
        workers: int | None = None,
        cache_dir: str | None = None,
        max_batch_size: int = 64,
        accounting: Accounting | None = None,
    ) -> None:
        super().__init__()
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.sandbox = sandbox
        self.workers = workers
        self.cache_dir = cache_dir
        self.max_batch_size = max_batch_size
        self.accounting = accounting

    def expand(self, samples: beam.PCollection) -> StageOutputs:
        built = apply_stage_fn(samples, "BuildPrograms", BuildProgramFn(STAGE))
        batches = (
            built.main
            | "FanOut" >> beam.Reshuffle()
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.max_batch_size)
        )
        ran = apply_stage_fn(
            batches, "RunInSandbox", RunProgramsFn(self.sandbox, self.workers, self.cache_dir)
        )
        outputs = merge_outputs("Execute", built, ran)
        if self.accounting is not None:
            self.accounting.count_stage(STAGE, samples, outputs)
            for status in VERDICTS:
                self.accounting.count(
                    outputs.main | f"Is_{status}" >> beam.Filter(lambda e, s=status: e.status == s),
                    STAGE,
                    status,
                )
        return outputs
