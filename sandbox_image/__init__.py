"""Sandboxed execution of generated Python programs.

    from sandbox_image import SandboxConfig, ExecutionResult, run_program, SandboxPool

`run_program` runs one program in a sandbox of its own; `SandboxPool` is the fork-server pool
(pre-started interpreters inside the sandbox, one fresh child per program). Both return an
`ExecutionResult` whose `backend` says which isolation was used ("bwrap" or the weaker
"rlimits"). All the processes of a machine share one budget of running programs
(`MachineSlots`, sized from its cores). See docs/sandbox.md for the threat model.
"""

from sandbox_image.config import (
    INFRASTRUCTURE,
    SANDBOX_ERROR,
    STARVED,
    STATUSES,
    VERDICTS,
    ExecutionResult,
    SandboxConfig,
)
from sandbox_image.executor import SandboxPool, run_program, sandbox_processes
from sandbox_image.launch import SandboxUnavailable, make_plan
from sandbox_image.slots import MachineSlots, machine_slots

__all__ = [
    "INFRASTRUCTURE",
    "SANDBOX_ERROR",
    "STARVED",
    "STATUSES",
    "VERDICTS",
    "ExecutionResult",
    "MachineSlots",
    "SandboxConfig",
    "SandboxPool",
    "SandboxUnavailable",
    "machine_slots",
    "make_plan",
    "run_program",
    "sandbox_processes",
]
