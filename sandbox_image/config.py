"""Configuration and result records of the sandbox.

`SandboxConfig` is small and picklable, so a Beam DoFn can carry it to workers and build its
pool in `setup()`. `ExecutionResult` is what every run returns, whatever happened: the sandbox
never raises for a program's behaviour.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sandbox_image.protocol import (  # the strings the supervisor reports
    CRASHED,
    FAILED,
    MEMORY,
    PASSED,
    SANDBOX_ERROR,
    STARVED,
    TIMEOUT,
)

STATUSES = (PASSED, FAILED, TIMEOUT, MEMORY, CRASHED, STARVED, SANDBOX_ERROR)
# Outcomes that say nothing about the program: retried, never cached, never a verdict.
INFRASTRUCTURE = (STARVED, SANDBOX_ERROR)
VERDICTS = tuple(s for s in STATUSES if s not in INFRASTRUCTURE)

BACKENDS = ("auto", "bwrap", "rlimits")


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """Limits and the choice of isolation for running one program.

    `memory_mb` caps the address space the program may add on top of the interpreter it starts
    in (for the fork server, on top of the pre-imported modules), per process.
    `max_processes` (RLIMIT_NPROC) counts processes and threads of the sandbox uid.
    `preload` are the modules a pool's supervisors import once for all programs;
    `light_preload` the subset its light tier holds (see SandboxPool).
    `python` is the interpreter that runs generated code; None picks one that an unprivileged
    uid can execute (see docs/sandbox.md). `site_packages` are extra directories put on the
    program's `sys.path` (read-only); None exposes the calling environment's site-packages
    when the sandbox interpreter is not the calling one.
    `timeout_s` is the program's own time: the wall clock less the time its processes waited
    for a CPU, so that a program on a busy machine is not judged for the machine's load; it
    may take `max_wall_factor` x `timeout_s` of wall clock in all, after which it is `starved`
    (an infrastructure outcome, retried). `machine_slots` bounds the programs running at once
    on this machine, across every process (None: its cores); `slots_dir` is where the slots
    live (None: see `sandbox_image.slots.default_slots_dir`).
    """

    timeout_s: float = 10.0
    memory_mb: int = 4096
    backend: str = "auto"
    cpu_time_s: float | None = None  # RLIMIT_CPU; None: timeout_s + 1
    max_processes: int = 256
    max_open_files: int = 256
    max_file_mb: int = 256
    scratch_mb: int = 512
    max_output_bytes: int = 65536
    python: str | None = None
    site_packages: tuple[str, ...] | None = None
    preload: tuple[str, ...] = ("numpy", "pandas")
    light_preload: tuple[str, ...] = ("numpy",)
    uid_base: int = 1_000_000_000
    max_attempts: int = 3
    start_timeout_s: float = 60.0
    max_wall_factor: float = 3.0
    machine_slots: int | None = None
    slots_dir: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.cpu_time_s is not None and not self.cpu_time_s > 0:
            raise ValueError(f"cpu_time_s must be > 0, got {self.cpu_time_s}")
        for name in ("memory_mb", "max_processes", "max_open_files", "max_file_mb", "scratch_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_open_files < 16:
            raise ValueError("max_open_files must be >= 16: the interpreter itself needs some")
        if self.max_output_bytes < 0:
            raise ValueError("max_output_bytes must be >= 0")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if not self.max_wall_factor >= 1:
            raise ValueError(f"max_wall_factor must be >= 1, got {self.max_wall_factor}")
        if self.machine_slots is not None and self.machine_slots < 1:
            raise ValueError(f"machine_slots must be >= 1, got {self.machine_slots}")
        if not 0 < self.uid_base < 2**31:
            raise ValueError("uid_base must be in (0, 2**31)")
        if isinstance(self.site_packages, list):
            object.__setattr__(self, "site_packages", tuple(self.site_packages))
        for name in ("preload", "light_preload"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def cpu_limit_s(self) -> int:
        """Whole seconds for RLIMIT_CPU (the kernel counts whole seconds)."""
        value = self.cpu_time_s if self.cpu_time_s is not None else self.timeout_s + 1.0
        return max(1, int(-(-value // 1)))

    def cpu_limit_for(self, timeout_s: float | None) -> int:
        """RLIMIT_CPU for a run whose own-time limit is `timeout_s` (None: the config's)."""
        return self.cpu_limit_s if timeout_s is None else max(1, int(timeout_s + 2))

    def replace(self, **changes: Any) -> SandboxConfig:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
    """Outcome of one program run.

    status: passed (exit code 0), failed (non-zero exit), timeout (it had its time, on a CPU
    or sleeping of its own accord, and did not finish; or it reached the CPU limit), memory
    (MemoryError under the address-space limit), crashed (killed by a signal); starved (the
    wall clock ran out while it waited for a CPU: the machine's fault) and sandbox_error (the
    sandbox itself failed) are infrastructure outcomes: retried, never a verdict, never cached.
    stdout/stderr are decoded with replacement and cut at `max_output_bytes` each.
    `cpu_s` is the CPU time of all the program's processes; `run_wait_s` the time they waited
    for a CPU when a time limit was judged (None otherwise, or where the kernel does not say).
    """

    status: str
    exit_code: int | None = None
    signal: int | None = None
    duration_s: float = 0.0
    stdout: str = ""
    stderr: str = ""
    backend: str = ""
    cpu_s: float = 0.0
    run_wait_s: float | None = None

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def is_verdict(self) -> bool:
        """Whether this says something about the program (and may be cached)."""
        return self.status not in INFRASTRUCTURE

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExecutionResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def sandbox_error(
        cls, message: str, backend: str = "", duration_s: float = 0.0
    ) -> ExecutionResult:
        return cls(status=SANDBOX_ERROR, stderr=message, backend=backend, duration_s=duration_s)
