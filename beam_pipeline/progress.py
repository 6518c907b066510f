"""Progress lines while a pipeline runs: records handled per step and rate, per process.

Every stage DoFn notes each record it routes (output, rejection or dead letter). At most once
per interval a process logs one line with the totals of the steps that moved since its
previous line, and each one's output rate between its first and latest record, e.g.

    progress pid 4711 after 92 s: responses.GenerateResponses out=40 rejected=3 errors=0 (0.4/s)

On the local runners the workers' lines reach the launcher's terminal; on Dataflow or Flink they
land in the worker logs. The final, cluster-wide numbers are in `report.json`.

The interval is `SELFCODEALIGN_PROGRESS_S` seconds (default 30; 0 turns the lines off), read
from the environment so that worker processes started by any runner see the same setting.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Callable

ENV_INTERVAL = "SELFCODEALIGN_PROGRESS_S"
DEFAULT_INTERVAL_S = 30.0
KINDS = ("out", "rejected", "errors")

log = logging.getLogger("beam_pipeline.progress")


def interval_from_env(environ: dict[str, str] | None = None) -> float:
    """The configured interval; an unparsable or negative value falls back to the default."""
    raw = (os.environ if environ is None else environ).get(ENV_INTERVAL, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_INTERVAL_S
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value >= 0 else DEFAULT_INTERVAL_S


@dataclasses.dataclass
class StepCounts:
    out: int = 0
    rejected: int = 0
    errors: int = 0
    first_at: float = 0.0
    last_at: float = 0.0


class Progress:
    """Thread-safe per-process counters with a throttled one-line summary."""

    def __init__(
        self,
        interval_s: float,
        emit: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self._emit = emit
        self._clock = clock
        self._lock = threading.Lock()
        self._steps: dict[str, StepCounts] = {}
        self._shown: dict[str, tuple[int, int, int]] = {}
        self._started = clock()
        self._last_line = self._started

    def note(self, step: str, kind: str, n: int = 1) -> None:
        """Counts `n` records of `kind` (out, rejected or errors) for `step`."""
        if self.interval_s <= 0:
            return
        now = self._clock()
        with self._lock:
            counts = self._steps.get(step)
            if counts is None:
                counts = self._steps[step] = StepCounts(first_at=now)
            setattr(counts, kind, getattr(counts, kind) + n)
            counts.last_at = now
            if now - self._last_line < self.interval_s:
                return
            self._last_line = now
            line = self.line(now)
        self._emit(line)

    def line(self, now: float | None = None) -> str:
        """Totals of the steps that handled records since the previous line."""
        now = self._clock() if now is None else now
        parts = []
        for step, c in sorted(self._steps.items()):
            totals = (c.out, c.rejected, c.errors)
            if self._shown.get(step) == totals:
                continue  # finished or waiting: its numbers are in the previous lines
            self._shown[step] = totals
            # The rate while the step was active: a finished step keeps its rate.
            elapsed = max(c.last_at - c.first_at, 1.0)
            parts.append(
                f"{step} out={c.out} rejected={c.rejected} errors={c.errors} "
                f"({c.out / elapsed:.1f}/s)"
            )
        head = f"progress pid {os.getpid()} after {now - self._started:.0f} s: "
        return head + (" | ".join(parts) if parts else "no new records")


_progress: Progress | None = None
_progress_lock = threading.Lock()


def progress() -> Progress:
    """This process's tracker, created on first use with the environment's interval."""
    global _progress
    if _progress is None:
        with _progress_lock:
            if _progress is None:
                _progress = Progress(interval_from_env(), log.info)
    return _progress


# The local job service (FnApiRunner with worker processes, PortableRunner on a local job
# server) re-logs every worker log entry as one protobuf dump on this logger.
WORKER_LOGGER = "apache_beam.runners.portability.local_job_service"
_WORKER_MESSAGE = re.compile(r'message: "((?:[^"\\]|\\.)*)"')
# Printed by every local worker process at start; says nothing about this pipeline.
_WORKER_NOISE = ("No semi_persistent_directory found",)


class WorkerProgressFilter(logging.Filter):
    """Workers' progress lines and warnings pass as their bare message; other info is quiet."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = _WORKER_MESSAGE.search(record.getMessage())
        message = found.group(1) if found is not None else None
        if message is not None and message.startswith(_WORKER_NOISE):
            return False
        if record.levelno < logging.WARNING and (
            message is None or not message.startswith("progress pid")
        ):
            return False
        if message is not None:
            prefix = "" if message.startswith("progress pid") else "worker: "
            record.msg, record.args = prefix + message, ()
        return True


def show_worker_progress() -> None:
    """Makes the local job service pass the workers' progress lines to this process's log."""
    logger = logging.getLogger(WORKER_LOGGER)
    if not any(isinstance(f, WorkerProgressFilter) for f in logger.filters):
        logger.addFilter(WorkerProgressFilter())
    logger.setLevel(logging.INFO)
