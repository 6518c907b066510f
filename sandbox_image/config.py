"""Configuration and result records of the sandbox.

`SandboxConfig` is small and picklable, so a Beam DoFn can carry it to workers and build its
pool in `setup()`. `ExecutionResult` is what every run returns, whatever happened: the sandbox
never raises for a program's behaviour.
"""

from __future__ import annotations

import dataclasses
from typing import Any

PASSED = "passed"
FAILED = "failed"
TIMEOUT = "timeout"
MEMORY = "memory"
CRASHED = "crashed"
SANDBOX_ERROR = "sandbox_error"
STATUSES = (PASSED, FAILED, TIMEOUT, MEMORY, CRASHED, SANDBOX_ERROR)

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

    def replace(self, **changes: Any) -> SandboxConfig:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
    """Outcome of one program run.

    status: passed (exit code 0), failed (non-zero exit), timeout (wall clock or CPU limit),
    memory (MemoryError under the address-space limit), crashed (killed by a signal),
    sandbox_error (the sandbox itself failed; retried, never a verdict on the program).
    stdout/stderr are decoded with replacement and cut at `max_output_bytes` each.
    """

    status: str
    exit_code: int | None = None
    signal: int | None = None
    duration_s: float = 0.0
    stdout: str = ""
    stderr: str = ""
    backend: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASSED

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
