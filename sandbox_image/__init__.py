"""Sandboxed execution of generated Python programs.

    from sandbox_image import SandboxConfig, ExecutionResult, run_program, SandboxPool

`run_program` runs one program in a sandbox of its own; `SandboxPool` is the fork-server pool
(pre-started interpreters inside the sandbox, one fresh child per program). Both return an
`ExecutionResult` whose `backend` says which isolation was used ("bwrap" or the weaker
"rlimits"). See docs/sandbox.md for the threat model.
"""

from sandbox_image.config import STATUSES, ExecutionResult, SandboxConfig
from sandbox_image.executor import SandboxPool, run_program, sandbox_processes
from sandbox_image.launch import SandboxUnavailable, make_plan

__all__ = [
    "STATUSES",
    "ExecutionResult",
    "SandboxConfig",
    "SandboxPool",
    "SandboxUnavailable",
    "make_plan",
    "run_program",
    "sandbox_processes",
]
