"""The supervisor: a Python process that runs inside the sandbox and forks one child per program.

Standard library only: it runs under the sandbox interpreter (which may be a different Python
than the caller's) as `python -I -S supervisor.py`, and the caller's packages are not importable
there. The host side (`sandbox_image.executor`) starts it under bubblewrap or as a plain process.

Protocol: one JSON object per line. The host first sends an init message (sys.path entries,
modules to preload, the uid programs run as, scratch location, cleanup mode), the supervisor
answers `{"ready": true, ...}`; then each job line gets exactly one result line.

Per job the supervisor writes `main.py` into a fresh scratch directory and forks a child
that: starts a new session, gets fresh stdin/stdout/stderr pipes, closes every other
descriptor, enters the scratch directory, sets rlimits and no_new_privs, drops to the sandbox
uid, takes a new session keyring and runs `main.py` as `__main__` in the already-initialised
interpreter (whose environment is already the program's minimal one). The supervisor drains
output up to a cap (reading on so a program that prints gigabytes never blocks), enforces the
wall clock, kills every process the program left behind and removes what it wrote, including
System V IPC objects.

The supervisor is a child subreaper: every descendant of a program stays in its subtree (an
orphan is re-parented to it, never to init), so "the supervisor has no children" means "nothing
the program started is alive".
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
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

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

STATUS_FD = 3  # the child writes b"R" here just before the program starts, b"M" on MemoryError
READ_CHUNK = 1 << 20
DRAIN_AFTER_EXIT_S = 2.0
CLEANUP_LIMIT_S = 10.0

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
) -> str:
    """Maps how the program's main process ended to a status (see ExecutionResult)."""
    if timed_out or cpu_exceeded or term_signal == signal.SIGXCPU:
        return "timeout"
    if memory_error:
        return "memory"
    if term_signal is not None:
        return "crashed"
    return "passed" if exit_code == 0 else "failed"


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
    def write(message: dict) -> None:
        data = (json.dumps(message, ensure_ascii=True) + "\n").encode()
        view = memoryview(data)
        while view:
            written = os.write(1, view)
            view = view[written:]


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


def _clear_ipc(state: dict) -> None:
    """Removes the sandbox uid's IPC objects (as that uid: only an owner may remove them)."""
    uid = state["uid"]
    if uid is not None:
        objects = ipc_objects(uid)
    elif state["private_ipc"]:
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


def _set_limits(job: dict, vm_limit: int) -> None:
    def cap(which: int, value: int) -> None:
        resource.setrlimit(which, (value, value))

    cap(resource.RLIMIT_AS, vm_limit)
    cpu = int(job["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    cap(resource.RLIMIT_FSIZE, int(job["fsize_mb"]) * 1024 * 1024)
    cap(resource.RLIMIT_NOFILE, int(job["nofile"]))
    cap(resource.RLIMIT_NPROC, int(job["nproc"]))
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


def _child(job: dict, state: dict, scratch: str, fds: dict, vm_limit: int) -> None:
    """In the forked child. Any failure before the program starts is a sandbox error.

    Everything that can be prepared once lives in the supervisor already (environment, std
    streams, oom score, main.py): each page the child writes is a copy-on-write fault.
    """
    try:
        os.setsid()
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        os.dup2(fds["stdin"], 0)
        os.dup2(fds["stdout"], 1)
        os.dup2(fds["stderr"], 2)
        os.dup2(fds["status"], STATUS_FD)
        os.closerange(STATUS_FD + 1, state["max_fd"])
        os.set_inheritable(STATUS_FD, False)
        os.chdir(scratch)
        _set_limits(job, vm_limit)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        uid = state["uid"]
        if uid is not None:
            _drop_privileges(uid)
        _fresh_keyrings(own_uid=uid is not None)
        sys.path[:] = state["program_path"]
        if "random" in job["source"]:
            _reseed()
        os.write(STATUS_FD, b"R")
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(2, f"sandbox child setup failed: {type(exc).__name__}: {exc}\n".encode())
        os._exit(71)
    try:
        _run_program(job["source"], os.path.join(scratch, "main.py"))
    finally:
        os._exit(1)


# ---------------------------------------------------------------------------------------------
# The supervisor side of one run


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


def _children_of(parent: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == parent:
            found.append(int(name))
    return found


def _kill_leftovers(state: dict, main_pid: int) -> bool:
    """Kills every process the program left; True once none is left."""
    if _reap_available():
        return True
    mode = state["cleanup"]
    uid = state["uid"]
    deadline = time.monotonic() + CLEANUP_LIMIT_S
    while time.monotonic() < deadline:
        if mode == "pidns":
            # Own PID namespace: everything but init and this process belongs to the program.
            with contextlib.suppress(OSError):
                os.kill(-1, signal.SIGKILL)
        elif mode == "uid":
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


def _scrub(state: dict, scratch: str) -> None:
    _clear_ipc(state)
    try:  # the common case: the program left only main.py
        os.unlink(os.path.join(scratch, "main.py"))
        os.rmdir(scratch)
    except OSError:
        remove_path(scratch)
    for directory in state["sweep_all"]:
        clear_directory(directory, keep=state["protect"])
    for directory in state["sweep_owned"]:
        clear_directory(directory, owner=state["uid"], keep=state["protect"])


def run_job(job: dict, state: dict) -> dict:
    scratch = os.path.join(state["scratch_root"], "work")
    remove_path(scratch)
    os.mkdir(scratch, 0o700)
    main_path = os.path.join(scratch, "main.py")
    with open(main_path, "w", encoding="utf-8", errors="surrogatepass") as handle:
        handle.write(job["source"])
    if state["uid"] is not None:
        os.chown(scratch, state["uid"], state["uid"])
        os.chown(main_path, state["uid"], state["uid"])
    vm_limit = _vm_size_bytes() + int(job["memory_mb"]) * 1024 * 1024

    stdin_data = job.get("stdin") or ""
    if stdin_data:
        stdin_fd = os.memfd_create("stdin")
        os.write(stdin_fd, stdin_data.encode("utf-8", "surrogatepass"))
        os.lseek(stdin_fd, 0, os.SEEK_SET)
    else:
        stdin_fd = os.open(os.devnull, os.O_RDONLY)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    st_r, st_w = os.pipe()
    fds = {"stdin": stdin_fd, "stdout": out_w, "stderr": err_w, "status": st_w}

    start = time.monotonic()
    pid = _fork()
    if pid == 0:
        _child(job, state, scratch, fds, vm_limit)
    for fd in (stdin_fd, out_w, err_w, st_w):
        os.close(fd)

    limit = int(job["max_output"])
    captures = {out_r: _Capture(limit), err_r: _Capture(limit), st_r: _Capture(64)}
    poller = select.poll()
    for fd in captures:
        poller.register(fd, select.POLLIN)
    try:
        pidfd = os.pidfd_open(pid)
        poller.register(pidfd, select.POLLIN)
    except (AttributeError, OSError):  # kernels before 5.3: poll the exit status instead
        pidfd = -1

    deadline = start + float(job["timeout_s"])
    timed_out = False
    status = None
    rusage = None
    end = None
    drain_deadline = None
    cleaned = True
    open_fds = set(captures)
    while open_fds or status is None:
        now = time.monotonic()
        if status is None:
            if now >= deadline:
                timed_out = True
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                _, status, rusage = os.wait4(pid, 0)
                end = time.monotonic()
                if pidfd >= 0:
                    poller.unregister(pidfd)
                cleaned = _kill_leftovers(state, pid)
                drain_deadline = time.monotonic() + DRAIN_AFTER_EXIT_S
                continue
            wait_ms = max(1, int((deadline - now) * 1000) + 1)
            if pidfd < 0:
                done, status_now, usage = os.wait4(pid, os.WNOHANG)
                if done:
                    status, rusage, end = status_now, usage, time.monotonic()
                    cleaned = _kill_leftovers(state, pid)
                    drain_deadline = time.monotonic() + DRAIN_AFTER_EXIT_S
                    continue
                wait_ms = min(wait_ms, 5)
        else:
            if now >= drain_deadline:
                break
            wait_ms = max(1, int((drain_deadline - now) * 1000) + 1)
        for fd, _event in poller.poll(wait_ms):
            if fd == pidfd:
                _, status, rusage = os.wait4(pid, 0)
                end = time.monotonic()
                poller.unregister(pidfd)
                cleaned = _kill_leftovers(state, pid)
                drain_deadline = time.monotonic() + DRAIN_AFTER_EXIT_S
                continue
            chunk = os.read(fd, READ_CHUNK)
            if chunk:
                captures[fd].add(chunk)
            else:
                poller.unregister(fd)
                open_fds.discard(fd)
    if pidfd >= 0:
        os.close(pidfd)
    for fd in captures:
        os.close(fd)
    _scrub(state, scratch)

    markers = bytes(captures[st_r].data)
    duration = (end or time.monotonic()) - start
    exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    term_signal = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    result = {
        "exit_code": exit_code,
        "signal": term_signal,
        "duration_s": round(duration, 6),
        "stdout": captures[out_r].text(),
        "stderr": captures[err_r].text(),
    }
    if not markers.startswith(b"R") and not timed_out:
        result["status"] = "sandbox_error"
        result["stderr"] = "sandbox: the program did not start\n" + result["stderr"]
        return result
    cpu_used = (rusage.ru_utime + rusage.ru_stime) if rusage is not None else 0.0
    result["status"] = classify(
        exit_code,
        term_signal,
        timed_out=timed_out,
        cpu_exceeded=term_signal == signal.SIGKILL and cpu_used >= int(job["cpu_s"]) - 0.05,
        memory_error=b"M" in markers[1:],
    )
    if not cleaned:
        # Something survived SIGKILL for 10 s: this supervisor can no longer promise a clean
        # slate to the next program, so it reports and stops.
        result["fatal"] = True
        result["status"] = "sandbox_error"
        result["stderr"] = "sandbox: processes left behind could not be killed\n" + result["stderr"]
    return result


# ---------------------------------------------------------------------------------------------
# Supervisor main loop


def setup(init: dict) -> dict:
    state = {
        "uid": init.get("uid"),
        "scratch_root": init["scratch_root"],
        "cleanup": init.get("cleanup", "pgroup"),
        "sweep_all": list(init.get("sweep_all", ())),
        "sweep_owned": list(init.get("sweep_owned", ())),
        "private_ipc": bool(init.get("private_ipc", False)),
        "protect": tuple(init.get("protect", ())),
        "env": dict(init.get("env", {})),
    }
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    import site

    site.setquit()  # exit() and quit() exist in a normal interpreter; -S leaves them out
    site.setcopyright()
    site.sethelper()
    # Plain sys.path entries: .pth files are not executed (an editable install's .pth would
    # map the project checkout into the program's import system).
    sys.path.extend(d for d in init.get("site_dirs", ()) if d not in sys.path)
    scratch = os.path.join(state["scratch_root"], "work")
    os.environ.clear()
    os.environ.update(state["env"])
    os.environ["HOME"] = scratch
    os.environ["TMPDIR"] = scratch
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as handle:
        # Inherited by every program: the kernel OOM killer takes sandboxed code first.
        handle.write("1000")
    preloaded = []
    for name in init.get("preload", ()):
        try:
            __import__(name)
        except Exception:
            continue
        preloaded.append(name)
    numpy = sys.modules.get("numpy")
    if numpy is not None:  # the first reseed imports and builds lazily: pay that once, here
        with contextlib.suppress(Exception):
            numpy.random.seed()
    state["program_path"] = [scratch, *sys.path]
    state["max_fd"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    # The supervisor never uses these streams; made here once, they are the program's (the
    # child only dup2()s its pipes onto fds 0-2).
    _fresh_std_streams()
    gc.collect()
    gc.freeze()  # keeps forked children from copying pages just to update gc headers
    state["preloaded"] = preloaded
    return state


def _leave_no_keys(state: dict) -> None:
    """At shutdown: the last program's keys would otherwise outlive the sandbox uid."""
    uid = state["uid"]
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


def main() -> int:
    channel = _Channel()
    init = channel.read()
    if init is None:
        return 0
    try:
        state = setup(init)
    except BaseException as exc:
        channel.write({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    channel.write(
        {
            "ready": True,
            "python": sys.version.split()[0],
            "executable": sys.executable,
            "preloaded": state["preloaded"],
            "pid": os.getpid(),
        }
    )
    while True:
        job = channel.read()
        if job is None:
            _leave_no_keys(state)
            return 0
        try:
            result = run_job(job, state)
        except BaseException as exc:
            result = {
                "status": "sandbox_error",
                "stderr": f"sandbox supervisor failed: {type(exc).__name__}: {exc}",
                "fatal": True,
            }
        channel.write(result)
        if result.get("fatal"):
            return 1


if __name__ == "__main__":
    sys.exit(main())
