"""Host side of the sandbox: supervisors, one-shot runs and the fork-server pool.

`run_program` starts one supervisor (under bubblewrap or as a plain process), runs one program
and stops it: one sandbox per program. `SandboxPool` keeps `workers` supervisors alive, each
with numpy/pandas pre-imported, and forks a fresh child per program: the fast path.

A supervisor that dies, stops answering or reports itself broken gives a `sandbox_error`; the
caller's job is retried on a fresh supervisor up to `config.max_attempts` times, so a
`sandbox_error` that reaches the caller means the sandbox, not the program, kept failing. A
`starved` program (the machine kept it off the CPU past its wall clock) is retried the same
way after a pause.

Every run holds one of the machine's slots (`sandbox_image.slots`) while its program runs, so
that all the processes of a machine together run at most `machine_slots` programs at once; a
program's clock starts when it has its slot.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import queue
import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sandbox_image import protocol
from sandbox_image.config import STARVED, ExecutionResult, SandboxConfig
from sandbox_image.launch import Plan, SandboxUnavailable, make_plan
from sandbox_image.slots import MachineSlots, machine_slots

DEFAULT_CONFIG = SandboxConfig()
REPLY_GRACE_S = 20.0  # output drain + cleanup inside the supervisor, on top of the wall clock
STARVED_PAUSE_S = 1.0  # before running a starved program again (times the attempt number)
_KILL_UID_SNIPPET = (
    "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
)


class SandboxFailure(Exception):
    """The sandbox itself failed (not the program)."""


class _Spawner:
    """Starts every supervisor from one long-lived thread.

    bwrap's --die-with-parent and the supervisor's parent-death signal fire when the *thread*
    that forked them exits. Beam and thread pools retire threads, so supervisors are forked
    from a thread that lives as long as the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._pid = -1

    def _loop(self) -> None:
        while True:
            future, args, kwargs = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(subprocess.Popen(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked copy of this process
                self._queue = queue.Queue()
                threading.Thread(target=self._loop, name="sandbox-spawner", daemon=True).start()
                self._pid = os.getpid()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((future, args, kwargs))
        return future.result()


_spawner = _Spawner()


def _own_process_count() -> int:
    uid = os.getuid()
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{name}").st_uid == uid:
                    count += 1
    return count


def sandbox_processes(uids: Iterable[int]) -> list[tuple[int, int]]:
    """(pid, uid) of live host processes whose real uid is one of `uids`."""
    wanted = set(uids)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", encoding="ascii", errors="replace") as handle:
                for line in handle:
                    if line.startswith("Uid:"):
                        uid = int(line.split()[1])
                        if uid in wanted:
                            found.append((int(name), uid))
                        break
        except (OSError, ValueError):
            continue
    return found


class Supervisor:
    """One supervisor process and its line protocol."""

    def __init__(
        self,
        plan: Plan,
        config: SandboxConfig,
        *,
        preload: tuple[str, ...] = (),
        slots: MachineSlots | None = None,
    ) -> None:
        self.plan = plan
        self.config = config
        self.preload = preload
        self.slots = slots or machine_slots(config.machine_slots, config.slots_dir)
        self.proc: subprocess.Popen | None = None
        self.uid: int | None = None
        self.ready: protocol.Ready | None = None
        self._buffer = bytearray()
        self._stderr = None
        self._scratch_root: str | None = None
        self._nproc = config.max_processes
        self.runs = 0

    @property
    def backend(self) -> str:
        return self.plan.backend

    def start(self) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        if self.plan.backend == "bwrap":
            scratch_root = "/sandbox"
        else:
            self._scratch_root = tempfile.mkdtemp(prefix="sandbox-")
            os.chmod(self._scratch_root, 0o755)
            scratch_root = self._scratch_root
        try:
            self.proc = _spawner.popen(
                self.plan.command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env={"PATH": "/usr/bin:/bin"},
                close_fds=True,
                start_new_session=True,
                cwd="/",
            )
        except OSError as exc:
            raise SandboxFailure(f"cannot start supervisor: {exc}") from exc
        if self.plan.privileged:
            # Unique among live processes: a uid of its own for every supervisor, so process
            # limits and kill(-1) never reach a program of another supervisor.
            self.uid = self.config.uid_base + self.proc.pid
        else:
            self._nproc = self.config.max_processes + _own_process_count() + 16
        self._send(self.plan.init_message(self.uid, scratch_root, tuple(self.preload)))
        deadline = time.monotonic() + self.config.start_timeout_s
        ready = self._decode(protocol.Ready, self._receive(deadline))
        if not ready.ready:
            raise SandboxFailure(f"supervisor did not start: {ready.error}")
        self.ready = ready

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            return self._stderr.read()[-4000:].decode("utf-8", "replace").strip()
        return ""

    @staticmethod
    def _decode(kind: type[protocol.M], data: dict) -> protocol.M:
        try:
            return kind.from_wire(data)
        except protocol.ProtocolError as exc:
            raise SandboxFailure(f"unreadable supervisor reply: {exc}") from exc

    def _send(self, message: protocol.Message) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(message.to_wire())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise SandboxFailure(f"supervisor is gone: {exc}; {self._stderr_tail()}") from exc

    def _receive(self, deadline: float) -> dict:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                try:
                    return json.loads(line)
                except ValueError as exc:
                    raise SandboxFailure(f"unreadable supervisor reply: {line[:200]!r}") from exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxFailure("supervisor did not answer in time")
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                self.proc.wait(timeout=5)
                raise SandboxFailure(
                    f"supervisor exited with {self.proc.returncode}: {self._stderr_tail()}"
                )
            self._buffer += chunk

    def job(self, source: str, stdin: str = "", timeout_s: float | None = None) -> protocol.Job:
        config = self.config
        timeout = config.timeout_s if timeout_s is None else timeout_s
        return protocol.Job(
            source=source,
            stdin=stdin,
            timeout_s=timeout,
            max_wall_s=timeout * config.max_wall_factor,
            memory_mb=config.memory_mb,
            cpu_s=config.cpu_limit_for(timeout_s),
            nproc=self._nproc,
            nofile=config.max_open_files,
            fsize_mb=config.max_file_mb,
            max_output=config.max_output_bytes,
        )

    def run(self, source: str, stdin: str = "", timeout_s: float | None = None) -> ExecutionResult:
        """Runs one program while holding one of the machine's slots."""
        job = self.job(source, stdin, timeout_s)
        with self.slots.hold():
            self._send(job)
            data = self._receive(time.monotonic() + job.max_wall_s + REPLY_GRACE_S)
        reply = self._decode(protocol.Reply, data)
        self.runs += 1
        if reply.fatal:
            raise SandboxFailure(reply.stderr or "supervisor failed")
        return ExecutionResult(
            status=reply.status,
            exit_code=reply.exit_code,
            signal=reply.signal,
            duration_s=reply.duration_s,
            stdout=reply.stdout,
            stderr=reply.stderr,
            backend=self.plan.backend,
            cpu_s=reply.cpu_s,
            run_wait_s=reply.run_wait_s,
        )

    def close(self) -> None:
        proc = self.proc
        self.proc = None
        if proc is not None:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
            if self.plan.backend == "rlimits" and self.uid is not None and proc.returncode != 0:
                self._kill_uid()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._scratch_root is not None:
            shutil.rmtree(self._scratch_root, ignore_errors=True)
            self._scratch_root = None

    def _kill_uid(self) -> None:
        """After a supervisor died mid-run (rlimits backend): kill what its program left."""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [self.plan.interpreter.path, "-I", "-S", "-c", _KILL_UID_SNIPPET],
                user=self.uid,
                group=self.uid,
                extra_groups=[],
                timeout=10,
                check=False,
                env={},
                cwd="/",
            )


def _error(message: str, backend: str) -> ExecutionResult:
    return ExecutionResult.sandbox_error(message, backend=backend)


def _pause_before_retry(result: ExecutionResult, attempt: int) -> None:
    """A starved program is run again once the machine had a moment to catch up."""
    if result.status == STARVED:
        time.sleep(STARVED_PAUSE_S * (attempt + 1))


def run_program(
    source: str, config: SandboxConfig = DEFAULT_CONFIG, stdin: str = ""
) -> ExecutionResult:
    """Runs one program in a sandbox of its own (one supervisor, started and stopped)."""
    try:
        plan = make_plan(config)
    except SandboxUnavailable as exc:
        return _error(str(exc), config.backend)
    result = _error("not run", plan.backend)
    for attempt in range(config.max_attempts):
        if attempt:
            _pause_before_retry(result, attempt - 1)
        supervisor = Supervisor(plan, config)
        try:
            supervisor.start()
            result = supervisor.run(source, stdin)
        except SandboxFailure as exc:
            result = _error(str(exc), plan.backend)
        finally:
            supervisor.close()
        if result.is_verdict:
            return result
    return result


def default_workers() -> int:
    """Supervisors per tier: twice the cores (how many programs run is the slots' business).

    A run is a chain of hand-offs (caller, supervisor, program, supervisor, caller), each a
    wake-up that waits for a core; with one supervisor per core the cores idle in between,
    with two they stay busy. On a shared machine this matters most: measured with other jobs
    on the same 2 cores, 4 supervisors ran 2.3x as many programs per second as 2.
    """
    return 2 * (os.cpu_count() or 1)


class _Tier:
    """Supervisors of one pool that share a set of pre-imported modules."""

    def __init__(self, preload: tuple[str, ...], size: int) -> None:
        self.preload = preload
        self.size = size
        self.idle: queue.Queue[Supervisor | None] = queue.Queue()
        self.started = False
        self.lock = threading.Lock()


class SandboxPool:
    """Fork-server pool: supervisors that fork a fresh child per program.

    Two tiers of `workers` supervisors each (default: `default_workers()`): the light tier
    pre-imports `config.light_preload` (numpy) and runs every program that names none of the other
    `config.preload` modules; the full tier pre-imports all of `config.preload` (numpy and
    pandas) and runs the programs that name one of them. Forking an interpreter that holds
    pandas and pyarrow costs several times more (page tables, copy-on-write, exit) than
    forking one that holds numpy, and most programs never import pandas; a program that
    imports it anyway (without naming it) still works, it imports it itself. The full tier
    starts on first use. With `light_preload == preload` there is one tier.

    Thread-safe: any number of threads may call `run`; each call takes an idle supervisor,
    then one of the machine's slots (`self.slots`, shared with every other pool and process on
    the machine) while its program runs.
    """

    def __init__(self, config: SandboxConfig = DEFAULT_CONFIG, workers: int | None = None):
        self.config = config
        self.workers = max(1, workers if workers is not None else default_workers())
        self.plan = make_plan(config)  # raises SandboxUnavailable for an impossible backend
        self.slots = machine_slots(config.machine_slots, config.slots_dir)
        self._lock = threading.Lock()
        self._live: set[Supervisor] = set()
        self._uids: set[int] = set()
        self._closed = False
        light = tuple(m for m in config.preload if m in config.light_preload)
        self._heavy_names = tuple(m for m in config.preload if m not in light)
        self._light = _Tier(light, self.workers)
        self._full = _Tier(tuple(config.preload), self.workers) if self._heavy_names else None
        self._start_tier(self._light)

    @property
    def backend(self) -> str:
        return self.plan.backend

    @property
    def uids(self) -> frozenset[int]:
        """Every uid this pool's programs have run as (empty when not root)."""
        with self._lock:
            return frozenset(self._uids)

    def _start_tier(self, tier: _Tier) -> None:
        with tier.lock:
            if tier.started:
                return
            with concurrent.futures.ThreadPoolExecutor(tier.size) as starter:
                for supervisor in starter.map(
                    lambda _: self._try_start(tier.preload), range(tier.size)
                ):
                    tier.idle.put(supervisor)
            tier.started = True

    def _tier_for(self, source: str) -> _Tier:
        if self._full is not None and any(name in source for name in self._heavy_names):
            self._start_tier(self._full)
            return self._full
        return self._light

    def _try_start(self, preload: tuple[str, ...]) -> Supervisor | None:
        if self._closed:
            return None
        supervisor = Supervisor(self.plan, self.config, preload=preload, slots=self.slots)
        try:
            supervisor.start()
        except SandboxFailure:
            supervisor.close()
            return None
        with self._lock:
            closed = self._closed  # closed while this one started
            if not closed:
                self._live.add(supervisor)
                if supervisor.uid is not None:
                    self._uids.add(supervisor.uid)
        if closed:
            supervisor.close()
            return None
        return supervisor

    def _discard(self, supervisor: Supervisor) -> None:
        with self._lock:
            self._live.discard(supervisor)
        supervisor.close()

    def run(
        self, source: str, stdin: str = "", *, timeout_s: float | None = None
    ) -> ExecutionResult:
        """Runs one program; `timeout_s` overrides the config's wall clock for this call."""
        if self._closed:
            raise RuntimeError("SandboxPool is closed")
        tier = self._tier_for(source)
        supervisor = tier.idle.get()
        result = _error("not run", self.plan.backend)
        try:
            for attempt in range(self.config.max_attempts):
                if attempt:
                    _pause_before_retry(result, attempt - 1)
                if supervisor is None:
                    supervisor = self._try_start(tier.preload)
                    if supervisor is None:
                        result = _error("supervisor could not start", self.plan.backend)
                        continue
                try:
                    result = supervisor.run(source, stdin, timeout_s)
                except SandboxFailure as exc:
                    result = _error(str(exc), self.plan.backend)
                    self._discard(supervisor)
                    supervisor = None
                    continue
                if result.is_verdict:
                    return result
            return result
        finally:
            tier.idle.put(supervisor)

    def run_many(self, sources: Sequence[str]) -> list[ExecutionResult]:
        if not sources:
            return []
        tiers = 1 if self._full is None else 2
        threads_wanted = min(self.workers * tiers, len(sources))
        with concurrent.futures.ThreadPoolExecutor(threads_wanted) as threads:
            return list(threads.map(self.run, sources))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            live = list(self._live)
            self._live.clear()
        for supervisor in live:
            supervisor.close()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Bound at definition: at interpreter exit the module's globals may already be None.
    def __del__(self, _suppress: type[contextlib.suppress] = contextlib.suppress) -> None:
        with _suppress(Exception):
            self.close()
