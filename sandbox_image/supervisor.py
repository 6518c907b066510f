"""The supervisor: a Python process that runs inside the sandbox and forks one child per program.

Standard library only: it runs under the sandbox interpreter (which may be a different Python
than the caller's) as `python -I -S supervisor.py`, and the caller's packages are not importable
there. The host side (`sandbox_image.executor`) starts it under bubblewrap or as a plain process.

Protocol (`protocol.py`, loaded from beside this file): one JSON object per line. The host
first sends `Init` (sys.path entries, modules to preload, the uid programs run as, scratch
location, cleanup mode), the supervisor answers `Ready`; then each `Job` gets one `Reply`.

Per job the supervisor writes `main.py` into a fresh scratch directory and forks a child
that: starts a new session, gets fresh stdin/stdout/stderr pipes, closes every other
descriptor, enters the scratch directory, sets rlimits and no_new_privs, drops to the sandbox
uid, takes a new session keyring and runs `main.py` as `__main__` in the already-initialised
interpreter (whose environment is already the program's minimal one). The supervisor drains
output up to a cap (reading on so a program that prints gigabytes never blocks), enforces the
time limit, kills every process the program left behind and removes what it wrote, including
System V IPC objects.

The time limit counts the program's own time: at the deadline the supervisor asks the kernel
how long the program's tasks waited for a CPU (the run delay in /proc/PID/task/TID/schedstat)
and extends the deadline by that much, up to `max_wall_s`. A program that had its time (on a
CPU, or asleep of its own accord) and is not done is a `timeout`; one that was still kept off
the CPU when `max_wall_s` ran out is `starved`, an infrastructure outcome (method.md §3).

The supervisor is a child subreaper: every descendant of a program stays in its subtree (an
orphan is re-parented to it, never to init), so "the supervisor has no children" means "nothing
the program started is alive".
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import importlib.util
import io
import json
import os
import resource
import select
import shutil
import signal
import stat
import sys
import time
import types
import typing

if typing.TYPE_CHECKING or __name__ != "__main__":
    from sandbox_image import protocol
else:  # run as a script inside the sandbox, where the package is not importable

    def _load_protocol() -> types.ModuleType:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protocol.py")
        spec = importlib.util.spec_from_file_location("_sandbox_protocol", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses looks its module up while building
        spec.loader.exec_module(module)
        return module

    protocol = _load_protocol()


PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

STATUS_FD = 3  # the child writes b"R" here just before the program starts, b"M" on MemoryError
READ_CHUNK = 1 << 20
DRAIN_AFTER_EXIT_S = 2.0
CLEANUP_LIMIT_S = 10.0
RECHECK_S = 0.02  # least time between two looks at a program kept past its deadline
# A program whose tasks waited for a CPU less than this share of its limit was not starved.
FAIR_TOLERANCE = 0.02

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}) failed: {os.strerror(err)}")


def classify(
    exit_code: int | None,
    term_signal: int | None,
    *,
    timed_out: bool,
    cpu_exceeded: bool,
    memory_error: bool,
    starved: bool = False,
) -> str:
    """Maps how the program's main process ended to a status (see ExecutionResult)."""
    if starved:
        return protocol.STARVED
    if timed_out or cpu_exceeded or term_signal == signal.SIGXCPU:
        return protocol.TIMEOUT
    if memory_error:
        return protocol.MEMORY
    if term_signal is not None:
        return protocol.CRASHED
    return protocol.PASSED if exit_code == 0 else protocol.FAILED


def judge_time(
    elapsed: float, cpu_s: float, wait_s: float | None, timeout_s: float, max_wall_s: float
) -> str | None:
    """At a deadline: `timeout`, `starved`, or None to let the program run on.

    The program's own time is the wall clock less the time its tasks were runnable but waiting
    for a CPU: time on a CPU and time asleep of its own accord (sleep, I/O, a lock, a child).
    It had its time when its own time, or the CPU time of all its tasks together, reached the
    limit (the second covers a program whose many threads wait for each other). It was starved
    when the wall clock ran out first. Without run-delay accounting (`wait_s` None) all time off
    a CPU counts as waiting: a sleeping program is then starved, as method.md §3 reads.
    """
    if wait_s is None:
        wait_s = max(0.0, elapsed - cpu_s)
    if cpu_s >= timeout_s or elapsed - wait_s >= timeout_s * (1 - FAIR_TOLERANCE):
        return protocol.TIMEOUT
    if elapsed >= max_wall_s:
        return protocol.STARVED
    return None


# ---------------------------------------------------------------------------------------------
# Framed I/O on fds 0 (in) and 1 (out); sys.stdin/sys.stdout are left untouched for the child.


class _Channel:
    def __init__(self) -> None:
        self._buffer = bytearray()

    def read(self) -> dict | None:
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                return json.loads(line)
            chunk = os.read(0, READ_CHUNK)
            if not chunk:
                return None
            self._buffer += chunk

    @staticmethod
    def write(message: protocol.Message) -> None:
        view = memoryview(message.to_wire())
        while view:
            written = os.write(1, view)
            view = view[written:]


@dataclasses.dataclass
class State:
    """What the supervisor knows after `setup`: the init message and what it prepared."""

    init: protocol.Init
    program_path: list[str]  # sys.path of every program
    max_fd: int
    preloaded: list[str]

    @property
    def uid(self) -> int | None:
        return self.init.uid


# ---------------------------------------------------------------------------------------------
# Removing what a program wrote


def _force_remove(function: object, path: str, _exc: object) -> None:
    """rmtree error hook: a program may leave directories without write or search permission."""
    parent = os.path.dirname(path)
    with contextlib.suppress(OSError):
        os.chmod(parent, stat.S_IRWXU)
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, stat.S_IRWXU)
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


def remove_path(path: str) -> None:
    """Removes a file, link or tree without following links (rmtree is fd-based on Linux)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=_force_remove)
        else:
            shutil.rmtree(path, onerror=_force_remove)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def clear_directory(path: str, owner: int | None = None, keep: tuple[str, ...] = ()) -> None:
    """Removes the entries of `path` (only those owned by `owner` when given), except those
    that are, or lead to, a path in `keep`."""
    try:
        if not os.listdir(path):
            return
        entries = list(os.scandir(path))
    except OSError:
        return
    for entry in entries:
        if any(k == entry.path or k.startswith(entry.path + "/") for k in keep):
            continue
        try:
            if owner is not None and entry.stat(follow_symlinks=False).st_uid != owner:
                continue
        except OSError:
            continue
        remove_path(entry.path)


# ---------------------------------------------------------------------------------------------
# System V IPC objects outlive their creator: one program could hand data to the next


_IPC_KINDS = {"shm": "shmid", "msg": "msqid", "sem": "semid"}
IPC_RMID = 0


def ipc_objects(uid: int | None) -> list[tuple[str, int]]:
    """(kind, id) of the SysV IPC objects owned by `uid` (all of them when None)."""
    found = []
    for kind, id_column in _IPC_KINDS.items():
        try:
            with open(f"/proc/sysvipc/{kind}", encoding="ascii") as handle:
                header = handle.readline().split()
                rows = [line.split() for line in handle if line.strip()]
        except OSError:
            continue
        if id_column not in header or "uid" not in header:
            continue
        id_at, uid_at = header.index(id_column), header.index("uid")
        for row in rows:
            if uid is None or int(row[uid_at]) == uid:
                found.append((kind, int(row[id_at])))
    return found


def _remove_ipc(objects: list[tuple[str, int]]) -> None:
    for kind, ident in objects:
        if kind == "shm":
            _libc.shmctl(ident, IPC_RMID, None)
        elif kind == "msg":
            _libc.msgctl(ident, IPC_RMID, None)
        else:
            _libc.semctl(ident, 0, IPC_RMID)


def _clear_ipc(state: State) -> None:
    """Removes the sandbox uid's IPC objects (as that uid: only an owner may remove them)."""
    uid = state.uid
    if uid is not None:
        objects = ipc_objects(uid)
    elif state.init.private_ipc:
        objects = ipc_objects(None)
    else:
        return  # rlimits backend without root: the program's objects look like the caller's
    if not objects:
        return
    if uid is None:
        _remove_ipc(objects)
        return
    helper = os.fork()
    if helper == 0:
        try:
            _drop_privileges(uid)
            _remove_ipc(objects)
        finally:
            os._exit(0)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(helper, 0)


# ---------------------------------------------------------------------------------------------
# Forking


def _single_threaded() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _fork() -> int:
    """fork(2) without CPython's at-fork machinery when that is safe.

    `os.fork()` re-initialises thread, logging, import and random state in the child; with
    numpy and pandas loaded that writes to a few hundred pages, each a copy-on-write fault, in
    both processes, on every program. With a single thread nothing is locked or owned by
    another thread, so a plain fork(2) (ctypes drops the GIL around the call and takes it back
    on return, in each process) leaves a consistent interpreter. Random state is renewed by
    `_reseed` in programs that can name it.
    """
    if not _single_threaded():
        return os.fork()
    pid = _libc.fork()
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fork failed: {os.strerror(err)}")
    return pid


def _reseed() -> None:
    """Fresh seeds for `random` and numpy's global generator (a fork shares the parent's)."""
    seed = os.urandom(32)
    random = sys.modules.get("random")
    if random is not None:
        random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        with contextlib.suppress(Exception):
            numpy.random.seed(int.from_bytes(seed[:4], "little"))


# ---------------------------------------------------------------------------------------------
# The child: becomes the program


def _vm_size_bytes() -> int:
    with open("/proc/self/statm", "rb") as handle:
        return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _set_limits(job: protocol.Job, vm_limit: int) -> None:
    def cap(which: int, value: int) -> None:
        resource.setrlimit(which, (value, value))

    cap(resource.RLIMIT_AS, vm_limit)
    resource.setrlimit(resource.RLIMIT_CPU, (job.cpu_s, job.cpu_s + 1))
    cap(resource.RLIMIT_FSIZE, job.fsize_mb * 1024 * 1024)
    cap(resource.RLIMIT_NOFILE, job.nofile)
    cap(resource.RLIMIT_NPROC, job.nproc)
    cap(resource.RLIMIT_CORE, 0)


_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine)
KEYCTL_GET_KEYRING_ID = 0
KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_CLEAR = 7
KEY_SPEC_USER_KEYRING = -4
KEY_SPEC_USER_SESSION_KEYRING = -5


def _fresh_keyrings(own_uid: bool) -> None:
    """Kernel keyrings are another place a program could leave data for the next one.

    A new session keyring stops the program from reaching the supervisor's (and so the host's)
    session keyring; the user keyrings of the sandbox uid are emptied of whatever an earlier
    program stored (only when the uid is the sandbox's own: otherwise they are the caller's).
    """
    if _SYS_KEYCTL is None:
        return
    _libc.syscall(_SYS_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, None)
    if own_uid:
        _clear_user_keyrings()


def _clear_user_keyrings() -> None:
    """Empties this uid's user keyrings, without creating them when they do not exist."""
    if _SYS_KEYCTL is None:
        return
    syscall = _libc.syscall
    for ring in (KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING):
        if syscall(_SYS_KEYCTL, KEYCTL_GET_KEYRING_ID, ctypes.c_long(ring), 0) > 0:
            syscall(_SYS_KEYCTL, KEYCTL_CLEAR, ctypes.c_long(ring))


def _drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError("uid drop did not take")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise OSError("uid drop is reversible")


def _fresh_std_streams() -> None:
    """Text streams as a fresh interpreter makes them for pipes (stderr line-buffered)."""
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        open(2, "wb", buffering=0, closefd=False),  # noqa: SIM115
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
        write_through=True,
    )


def _exit_code_of(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr)
    return 1


def _finish(code: int) -> None:
    """Interpreter shutdown as CPython does it: join threads, atexit, flush; then exit."""
    threading = sys.modules.get("threading")
    if threading is not None:
        with contextlib.suppress(BaseException):
            threading._shutdown()  # type: ignore[attr-defined]
    atexit = sys.modules.get("atexit")
    if atexit is not None:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            code = code or 120
    os._exit(code)


def _run_program(source: str, path: str) -> None:
    """Runs `source` as `python main.py` would; never returns."""
    module = types.ModuleType("__main__")
    module.__file__ = path
    module.__builtins__ = __builtins__  # type: ignore[attr-defined]
    module.__cached__ = None  # type: ignore[attr-defined]
    sys.modules["__main__"] = module
    sys.argv = [path]
    code = 0
    try:
        compiled = compile(source, path, "exec")
        exec(compiled, module.__dict__)
    except SystemExit as exc:
        code = _exit_code_of(exc)
    except BaseException as exc:
        if isinstance(exc, MemoryError):
            with contextlib.suppress(OSError):
                os.write(STATUS_FD, b"M")
        tb = exc.__traceback__
        # Hide this function's frame: the traceback starts in main.py as it would natively.
        if tb is not None and tb.tb_frame.f_code is _run_program.__code__:
            tb = tb.tb_next
        with contextlib.suppress(BaseException):
            sys.excepthook(type(exc), exc, exc.with_traceback(tb).__traceback__)
        code = 1
    _finish(code)


def _child(job: protocol.Job, state: State, scratch: str, fds: _ChildFds, vm_limit: int) -> None:
    """In the forked child. Any failure before the program starts is a sandbox error.

    Everything that can be prepared once lives in the supervisor already (environment, std
    streams, oom score, main.py): each page the child writes is a copy-on-write fault.
    """
    try:
        os.setsid()
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        os.dup2(fds.stdin, 0)
        os.dup2(fds.stdout, 1)
        os.dup2(fds.stderr, 2)
        os.dup2(fds.status, STATUS_FD)
        os.closerange(STATUS_FD + 1, state.max_fd)
        os.set_inheritable(STATUS_FD, False)
        os.chdir(scratch)
        _set_limits(job, vm_limit)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        uid = state.uid
        if uid is not None:
            _drop_privileges(uid)
        _fresh_keyrings(own_uid=uid is not None)
        sys.path[:] = state.program_path
        if "random" in job.source:
            _reseed()
        os.write(STATUS_FD, b"R")
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(2, f"sandbox child setup failed: {type(exc).__name__}: {exc}\n".encode())
        os._exit(71)
    try:
        _run_program(job.source, os.path.join(scratch, "main.py"))
    finally:
        os._exit(1)


# ---------------------------------------------------------------------------------------------
# After a program: its output, what it left running, what it wrote


class _Capture:
    """Keeps the first `limit` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        out = self.data.decode("utf-8", "replace")
        if self.dropped:
            out += f"\n[sandbox: {self.dropped} more bytes not kept]"
        return out


def _reap_available() -> bool:
    """Reaps every exited child; True when no child is left at all."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return False


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process (one pass over /proc)."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue  # exited in between
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            parents[int(name)] = int(fields[1])
    return parents


def _children_of(parent: int) -> list[int]:
    return [pid for pid, ppid in _parents().items() if ppid == parent]


def _kill_leftovers(state: State, main_pid: int) -> bool:
    """Kills every process the program left; True once none is left."""
    if _reap_available():
        return True
    mode = state.init.cleanup
    uid = state.uid
    deadline = time.monotonic() + CLEANUP_LIMIT_S
    while time.monotonic() < deadline:
        if mode == "pidns":
            # Own PID namespace: everything but init and this process belongs to the program.
            with contextlib.suppress(OSError):
                os.kill(-1, signal.SIGKILL)
        elif mode == "uid" and uid is not None:
            helper = os.fork()
            if helper == 0:
                try:
                    _drop_privileges(uid)
                    os.kill(-1, signal.SIGKILL)  # every process of the sandbox uid, not itself
                finally:
                    os._exit(0)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(helper, 0)
        else:
            with contextlib.suppress(OSError):
                os.killpg(main_pid, signal.SIGKILL)
            for pid in _children_of(os.getpid()):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.0005)
        if _reap_available():
            return True
    return False


def _scrub(state: State, scratch: str) -> None:
    _clear_ipc(state)
    try:  # the common case: the program left only main.py
        os.unlink(os.path.join(scratch, "main.py"))
        os.rmdir(scratch)
    except OSError:
        remove_path(scratch)
    protect = tuple(state.init.protect)
    for directory in state.init.sweep_all:
        clear_directory(directory, keep=protect)
    for directory in state.init.sweep_owned:
        clear_directory(directory, owner=state.uid, keep=protect)


# ---------------------------------------------------------------------------------------------
# How much time a program had: CPU time and time spent waiting for a CPU

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_HAS_SCHEDSTAT = os.path.exists("/proc/self/schedstat")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _descendants(root: int) -> list[int]:
    """Live processes below `root` (one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _task_times(pid: int) -> tuple[float, float | None]:
    """(CPU seconds, seconds runnable but waiting for a CPU) of the live threads of `pid`."""
    if not _HAS_SCHEDSTAT:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            return 0.0, None
        fields = data[data.rfind(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS, None
    cpu_ns = wait_ns = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0, 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as handle:
                on_cpu, waited = handle.read().split()[:2]
        except (OSError, ValueError):
            continue  # exited in between
        cpu_ns += int(on_cpu)
        wait_ns += int(waited)
    return cpu_ns / 1e9, wait_ns / 1e9


def program_time(root: int) -> tuple[float, float | None]:
    """(CPU seconds, run-queue wait seconds or None) of every live process below `root`.

    Below the supervisor every process is the program's (the supervisor is a subreaper and runs
    one program at a time). Threads and processes that already ended are not counted: the
    wait is a lower bound, which errs towards a verdict.
    """
    cpu = 0.0
    wait: float | None = 0.0
    for pid in _descendants(root):
        task_cpu, task_wait = _task_times(pid)
        cpu += task_cpu
        wait = None if task_wait is None or wait is None else wait + task_wait
    return cpu, wait


# ---------------------------------------------------------------------------------------------
# The supervisor side of one run


def _prepare_scratch(job: protocol.Job, state: State) -> str:
    """A fresh scratch directory holding main.py, owned by the sandbox uid."""
    scratch = os.path.join(state.init.scratch_root, "work")
    remove_path(scratch)
    os.mkdir(scratch, 0o700)
    main_path = os.path.join(scratch, "main.py")
    with open(main_path, "w", encoding="utf-8", errors="surrogatepass") as handle:
        handle.write(job.source)
    if state.uid is not None:
        os.chown(scratch, state.uid, state.uid)
        os.chown(main_path, state.uid, state.uid)
    return scratch


def _stdin_fd(data: str) -> int:
    if not data:
        return os.open(os.devnull, os.O_RDONLY)
    fd = os.memfd_create("stdin")
    os.write(fd, data.encode("utf-8", "surrogatepass"))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@dataclasses.dataclass(frozen=True)
class _ChildFds:
    """The child's ends: dup2()ed onto fds 0, 1, 2 and STATUS_FD."""

    stdin: int
    stdout: int
    stderr: int
    status: int

    def close(self) -> None:
        for fd in (self.stdin, self.stdout, self.stderr, self.status):
            os.close(fd)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000) + 1)


class _Run:
    """One program from fork to reap: drains its output, keeps its time limit, ends it."""

    def __init__(self, job: protocol.Job, state: State, scratch: str) -> None:
        self.job = job
        self.state = state
        vm_limit = _vm_size_bytes() + job.memory_mb * 1024 * 1024
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.status_r, status_w = os.pipe()
        fds = _ChildFds(_stdin_fd(job.stdin), out_w, err_w, status_w)
        self.cpu_before = _children_cpu_s()
        self.start = time.monotonic()
        self.pid = _fork()
        if self.pid == 0:
            _child(job, state, scratch, fds, vm_limit)
        fds.close()
        self.out = _Capture(job.max_output)
        self.err = _Capture(job.max_output)
        self.captures = {out_r: self.out, err_r: self.err, self.status_r: _Capture(64)}
        self.open_fds = set(self.captures)
        self.poller = select.poll()
        for fd in self.captures:
            self.poller.register(fd, select.POLLIN)
        try:
            self.pidfd = os.pidfd_open(self.pid)
            self.poller.register(self.pidfd, select.POLLIN)
        except (AttributeError, OSError):  # kernels before 5.3: poll the exit status instead
            self.pidfd = -1
        # The program's clock starts when it does (the child's b"R"): what comes before is the
        # sandbox's own work. A child that never gets there is stopped at the wall-clock cap.
        self.clock: float | None = None
        self.deadline = self.start + job.max_wall_s
        self.limit: str | None = None  # TIMEOUT or STARVED once a time limit ended the run
        self.wait_s: float | None = None
        self.exit_status: int | None = None
        self.rusage: resource.struct_rusage | None = None
        self.end: float | None = None
        self.drain_deadline = 0.0
        self.cleaned = True

    def watch(self) -> None:
        """Until the program has ended and its output is drained (or the drain timed out)."""
        while self.open_fds or self.exit_status is None:
            wait_ms = self._due()
            if wait_ms is None:
                return
            for fd, _event in self.poller.poll(wait_ms):
                if fd == self.pidfd:
                    self._exited(*os.wait4(self.pid, 0)[1:])
                else:
                    self._read(fd)

    def _due(self) -> int | None:
        """Does what is due now; milliseconds until the next thing is, None when done."""
        now = time.monotonic()
        if self.exit_status is not None:
            return None if now >= self.drain_deadline else _ms(self.drain_deadline - now)
        if now >= self.deadline:
            self._at_deadline(now)
            return 0
        if self.pidfd < 0:
            done, status, usage = os.wait4(self.pid, os.WNOHANG)
            if done:
                self._exited(status, usage)
                return 0
            return min(_ms(self.deadline - now), 5)
        return _ms(self.deadline - now)

    def _at_deadline(self, now: float) -> None:
        """Ends the program if it had its time or the wall clock ran out; else moves the
        deadline on by the time it spent waiting for a CPU."""
        job, clock = self.job, self.clock
        if clock is not None:
            cpu, wait = program_time(os.getpid())
            cpu += _children_cpu_s() - self.cpu_before
            elapsed = now - clock
            self.wait_s = wait
            self.limit = judge_time(elapsed, cpu, wait, job.timeout_s, job.max_wall_s)
            if self.limit is None:
                waited = wait if wait is not None else elapsed - cpu
                earliest = clock + job.timeout_s + waited  # its own time cannot be up before
                self.deadline = min(clock + job.max_wall_s, max(now + RECHECK_S, earliest))
                return
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        self._exited(*os.wait4(self.pid, 0)[1:])

    def _exited(self, status: int, usage: resource.struct_rusage) -> None:
        """The main process is reaped: kill what it left, then drain the pipes a moment."""
        self.exit_status, self.rusage, self.end = status, usage, time.monotonic()
        if self.pidfd >= 0:
            self.poller.unregister(self.pidfd)
        self.cleaned = _kill_leftovers(self.state, self.pid)
        self.drain_deadline = time.monotonic() + DRAIN_AFTER_EXIT_S

    def _read(self, fd: int) -> None:
        chunk = os.read(fd, READ_CHUNK)
        if fd == self.status_r and self.clock is None and chunk.startswith(b"R"):
            self.clock = time.monotonic()
            self.deadline = self.clock + self.job.timeout_s
        if chunk:
            self.captures[fd].add(chunk)
        else:
            self.poller.unregister(fd)
            self.open_fds.discard(fd)

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
        for fd in self.captures:
            os.close(fd)

    def reply(self) -> protocol.Reply:
        """How the program ended, once it is reaped and cleaned up after."""
        status = self.exit_status
        assert status is not None and self.rusage is not None
        markers = bytes(self.captures[self.status_r].data)
        exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        term_signal = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        stderr = self.err.text()
        main_cpu = self.rusage.ru_utime + self.rusage.ru_stime
        if not self.cleaned:
            # Something survived SIGKILL for 10 s: this supervisor can no longer promise a
            # clean slate to the next program, so it reports and stops.
            verdict = protocol.SANDBOX_ERROR
            stderr = "sandbox: processes left behind could not be killed\n" + stderr
        elif not markers.startswith(b"R") and self.limit is None:
            verdict = protocol.SANDBOX_ERROR
            stderr = "sandbox: the program did not start\n" + stderr
        else:
            verdict = classify(
                exit_code,
                term_signal,
                timed_out=self.limit == protocol.TIMEOUT,
                starved=self.limit == protocol.STARVED,
                cpu_exceeded=term_signal == signal.SIGKILL and main_cpu >= self.job.cpu_s - 0.05,
                memory_error=b"M" in markers[1:],
            )
        return protocol.Reply(
            status=verdict,
            exit_code=exit_code,
            signal=term_signal,
            duration_s=round((self.end or time.monotonic()) - self.start, 6),
            cpu_s=round(_children_cpu_s() - self.cpu_before, 6),
            run_wait_s=None if self.wait_s is None else round(self.wait_s, 6),
            stdout=self.out.text(),
            stderr=stderr,
            fatal=not self.cleaned,
        )


def run_job(job: protocol.Job, state: State) -> protocol.Reply:
    """Runs one program in a fresh scratch directory and leaves nothing of it behind."""
    scratch = _prepare_scratch(job, state)
    run = _Run(job, state, scratch)
    try:
        run.watch()
    finally:
        run.close()
    _scrub(state, scratch)
    return run.reply()


# ---------------------------------------------------------------------------------------------
# Supervisor main loop


def setup(init: protocol.Init) -> State:
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    import site

    site.setquit()  # exit() and quit() exist in a normal interpreter; -S leaves them out
    site.setcopyright()
    site.sethelper()
    # Plain sys.path entries: .pth files are not executed (an editable install's .pth would
    # map the project checkout into the program's import system).
    sys.path.extend(d for d in init.site_dirs if d not in sys.path)
    scratch = os.path.join(init.scratch_root, "work")
    os.environ.clear()
    os.environ.update(init.env)
    os.environ["HOME"] = scratch
    os.environ["TMPDIR"] = scratch
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as handle:
        # Inherited by every program: the kernel OOM killer takes sandboxed code first.
        handle.write("1000")
    preloaded = []
    for name in init.preload:
        try:
            __import__(name)
        except Exception:
            continue
        preloaded.append(name)
    numpy = sys.modules.get("numpy")
    if numpy is not None:  # the first reseed imports and builds lazily: pay that once, here
        with contextlib.suppress(Exception):
            numpy.random.seed()
    state = State(
        init=init,
        program_path=[scratch, *sys.path],
        max_fd=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        preloaded=preloaded,
    )
    # The supervisor never uses these streams; made here once, they are the program's (the
    # child only dup2()s its pipes onto fds 0-2).
    _fresh_std_streams()
    gc.collect()
    gc.freeze()  # keeps forked children from copying pages just to update gc headers
    return state


def _leave_no_keys(state: State) -> None:
    """At shutdown: the last program's keys would otherwise outlive the sandbox uid."""
    uid = state.uid
    if uid is None or _SYS_KEYCTL is None:
        return
    helper = os.fork()
    if helper == 0:
        try:
            _drop_privileges(uid)
            _clear_user_keyrings()
        finally:
            os._exit(0)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(helper, 0)


def _serve(channel: _Channel, state: State) -> int:
    """Answers jobs until the host closes the channel (0) or this supervisor is broken (1)."""
    while True:
        message = channel.read()
        if message is None:
            _leave_no_keys(state)
            return 0
        try:
            reply = run_job(protocol.Job.from_wire(message), state)
        except BaseException as exc:
            reply = protocol.Reply(
                status=protocol.SANDBOX_ERROR,
                stderr=f"sandbox supervisor failed: {type(exc).__name__}: {exc}",
                fatal=True,
            )
        channel.write(reply)
        if reply.fatal:
            return 1


def main() -> int:
    channel = _Channel()
    message = channel.read()
    if message is None:
        return 0
    try:
        state = setup(protocol.Init.from_wire(message))
    except BaseException as exc:
        channel.write(protocol.Ready(ready=False, error=f"{type(exc).__name__}: {exc}"))
        return 1
    ready = protocol.Ready(
        ready=True,
        python=sys.version.split()[0],
        executable=sys.executable,
        preloaded=state.preloaded,
        pid=os.getpid(),
    )
    channel.write(ready)
    return _serve(channel, state)


if __name__ == "__main__":
    sys.exit(main())
