"""The messages between the host (`executor.py`) and a supervisor (`supervisor.py`).

Standard library only, like the supervisor, which loads this file from beside itself inside
the sandbox. One JSON object per line: the host sends `Init`, the supervisor answers `Ready`;
then every `Job` gets exactly one `Reply`. Each message is a frozen dataclass; `to_wire` and
`from_wire` convert it to and from the JSON object, so a misspelt or missing field fails where
the message is built, not as a silent default on the other side.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

M = TypeVar("M", bound="Message")

# Statuses a supervisor reports; `sandbox_image.config` takes them from here (the supervisor
# loads only this file, never the package).
PASSED = "passed"
FAILED = "failed"
TIMEOUT = "timeout"
MEMORY = "memory"
CRASHED = "crashed"
STARVED = "starved"
SANDBOX_ERROR = "sandbox_error"

# How the supervisor finds everything a program left behind (see supervisor._kill_leftovers).
CLEANUP_MODES = ("pidns", "uid", "pgroup")


class ProtocolError(ValueError):
    """A line that is not the message it should be."""


@dataclasses.dataclass(frozen=True)
class Message:
    def to_wire(self) -> bytes:
        return (json.dumps(dataclasses.asdict(self), ensure_ascii=True) + "\n").encode()

    @classmethod
    def from_wire(cls: type[M], data: dict[str, Any]) -> M:
        if not isinstance(data, dict):
            raise ProtocolError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ProtocolError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ProtocolError(f"{cls.__name__}: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class Init(Message):
    """Host -> supervisor, once: where programs run, as whom, and what to clean up after them.

    `uid`: the uid programs run as (None: the supervisor's own, when not root).
    `sweep_all`: directories emptied after every program; `sweep_owned`: directories from
    which the entries owned by `uid` are removed; `protect`: paths the sweeps leave alone.
    `private_ipc`: the supervisor has its own IPC namespace (every object there is a program's).
    """

    scratch_root: str
    uid: int | None = None
    cleanup: str = "pgroup"
    sweep_all: list[str] = dataclasses.field(default_factory=list)
    sweep_owned: list[str] = dataclasses.field(default_factory=list)
    private_ipc: bool = False
    site_dirs: list[str] = dataclasses.field(default_factory=list)
    protect: list[str] = dataclasses.field(default_factory=list)
    preload: list[str] = dataclasses.field(default_factory=list)
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cleanup not in CLEANUP_MODES:
            raise ProtocolError(f"cleanup must be one of {CLEANUP_MODES}, got {self.cleanup!r}")


@dataclasses.dataclass(frozen=True)
class Ready(Message):
    """Supervisor -> host, once: started (or why not)."""

    ready: bool
    error: str = ""
    python: str = ""
    executable: str = ""
    preloaded: list[str] = dataclasses.field(default_factory=list)
    pid: int = 0


@dataclasses.dataclass(frozen=True)
class Job(Message):
    """Host -> supervisor: one program and its limits.

    `timeout_s` is the program's own time (wall clock less the time it spent waiting for a
    CPU); `max_wall_s` is the wall clock it may take in all, however long it waited.
    `cpu_s` is RLIMIT_CPU (whole seconds), `nproc`, `nofile`, `fsize_mb` the other rlimits,
    `max_output` the bytes kept of stdout and of stderr each.
    """

    source: str
    timeout_s: float
    max_wall_s: float
    memory_mb: int
    cpu_s: int
    nproc: int
    nofile: int
    fsize_mb: int
    max_output: int
    stdin: str = ""


@dataclasses.dataclass(frozen=True)
class Reply(Message):
    """Supervisor -> host: how one program ended.

    `cpu_s`: CPU time of every process of the program; `run_wait_s`: time its processes spent
    runnable but waiting for a CPU, at the moment a time limit was judged (None when the kernel
    does not account it or no limit was reached). `fatal`: the supervisor cannot go on.
    """

    status: str
    exit_code: int | None = None
    signal: int | None = None
    duration_s: float = 0.0
    cpu_s: float = 0.0
    run_wait_s: float | None = None
    stdout: str = ""
    stderr: str = ""
    fatal: bool = False
