"""Host side: which interpreter runs generated code, which backend isolates it, and the exact
command line and init message that start a supervisor.

Interpreter choice (see docs/sandbox.md): generated code runs under an unprivileged uid, which
must be able to execute the interpreter. The calling interpreter is used when it can (a
Docker image's /usr/local/bin/python); otherwise (pyenv under a 0700 /root) a system Python of
the same major.minor version is used, with the calling environment's site-packages put on its
`sys.path` read-only, so numpy and pandas of the project environment import there.

Backend choice: "auto" takes bubblewrap when `bwrap` exists and a probe sandbox starts, and
falls back to the rlimits-only backend (clearly weaker) with a warning otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import site
import stat
import subprocess
import sys
from pathlib import Path

from sandbox_image import protocol
from sandbox_image.config import SandboxConfig

log = logging.getLogger("sandbox_image")

SUPERVISOR_PATH = str(Path(__file__).with_name("supervisor.py"))
PROTOCOL_PATH = str(Path(__file__).with_name("protocol.py"))
SANDBOX_SUPERVISOR_PATH = "/opt/sandbox/supervisor.py"
SANDBOX_PROTOCOL_PATH = "/opt/sandbox/protocol.py"  # beside the supervisor, which loads it
SANDBOX_SCRATCH_ROOT = "/sandbox"

# Capabilities the in-sandbox supervisor keeps when bwrap runs as root (no user namespace):
# creating a scratch directory owned by the sandbox uid, dropping to that uid, killing what a
# program leaves behind, deleting what it wrote. Programs never hold any of them.
SUPERVISOR_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_KILL")

PROGRAM_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "USER": "sandbox",
    "LOGNAME": "sandbox",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
    # pyarrow (imported by pandas) otherwise starts a jemalloc purging thread in every
    # interpreter; the fork server forks fastest from a single-threaded process.
    "JE_ARROW_MALLOC_CONF": "background_thread:false",
}

# /etc entries a Python program may legitimately read; the rest of /etc stays out of view.
ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "alternatives",
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "mime.types",
)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

_PROBE = (
    "import json, site, sys, sysconfig\n"
    "print(json.dumps({\n"
    "    'version': sys.version.split()[0],\n"
    "    'major_minor': list(sys.version_info[:2]),\n"
    "    'executable': sys.executable,\n"
    "    'prefixes': sorted({sys.prefix, sys.base_prefix,\n"
    "                        sys.exec_prefix, sys.base_exec_prefix}),\n"
    "    'stdlib': [sysconfig.get_path('stdlib'), sysconfig.get_path('platstdlib')],\n"
    "    'site': site.getsitepackages(),\n"
    "}))\n"
)


class SandboxUnavailable(RuntimeError):
    """The requested backend or interpreter cannot run on this machine."""


@dataclasses.dataclass(frozen=True)
class Interpreter:
    path: str
    version: str
    needs: tuple[str, ...]  # directories the interpreter reads (prefixes, stdlib)
    site_dirs: tuple[str, ...]  # put on the program's sys.path with site.addsitedir


def _accessible_to_others(path: str) -> bool:
    """Whether a uid with no relation to the file's owner can execute `path`."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return False
    if not st.st_mode & stat.S_IXOTH:
        return False
    parent = os.path.dirname(real)
    while True:
        try:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        if parent == "/":
            return True
        parent = os.path.dirname(parent)


@functools.lru_cache(maxsize=16)
def probe_interpreter(path: str) -> dict:
    try:
        out = subprocess.run(
            [path, "-I", "-S", "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={"PATH": PROGRAM_ENV["PATH"]},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"cannot run interpreter {path}: {exc}") from exc
    return json.loads(out.stdout)


def _calling_site_dirs() -> tuple[str, ...]:
    dirs = [*site.getsitepackages()]
    return tuple(d for d in dict.fromkeys(dirs) if os.path.isdir(d))


@functools.lru_cache(maxsize=16)
def resolve_interpreter(
    python: str | None, site_packages: tuple[str, ...] | None, need_unprivileged: bool
) -> Interpreter:
    """Picks the interpreter for generated code (see the module docstring)."""
    if python is not None:
        info = probe_interpreter(python)
        if need_unprivileged and not _accessible_to_others(python):
            raise SandboxUnavailable(
                f"interpreter {python} cannot be executed by an unprivileged uid "
                "(a parent directory or the file lacks o+x)"
            )
        site_dirs = tuple(site_packages) if site_packages is not None else tuple(info["site"])
        path = python
    elif not need_unprivileged or _accessible_to_others(sys.executable):
        info = probe_interpreter(sys.executable)
        site_dirs = tuple(site_packages) if site_packages is not None else tuple(info["site"])
        path = sys.executable
    else:
        wanted = f"{sys.version_info[0]}.{sys.version_info[1]}"
        candidates = (
            f"/usr/bin/python{wanted}",
            f"/usr/local/bin/python{wanted}",
            "/usr/bin/python3",
        )
        path = ""
        info = {}
        for candidate in candidates:
            if not os.path.exists(candidate) or not _accessible_to_others(candidate):
                continue
            try:
                info = probe_interpreter(candidate)
            except SandboxUnavailable:
                continue
            if ".".join(map(str, info["major_minor"])) == wanted:
                path = candidate
                break
        if not path:
            raise SandboxUnavailable(
                f"{sys.executable} is not executable by an unprivileged uid and no system "
                f"python{wanted} was found; set SandboxConfig(python=...)"
            )
        # Extension modules built for one 3.x patch release load in another of the same 3.x.
        site_dirs = tuple(site_packages) if site_packages is not None else _calling_site_dirs()
    site_dirs = tuple(d for d in site_dirs if os.path.isdir(d))
    needs = [*info["prefixes"], *info["stdlib"], os.path.dirname(os.path.realpath(path))]
    return Interpreter(
        path=path,
        version=info["version"],
        needs=tuple(dict.fromkeys(os.path.realpath(p) for p in needs if p)),
        site_dirs=tuple(os.path.realpath(d) for d in site_dirs),
    )


def _covered(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def bwrap_args(
    interpreter: Interpreter,
    *,
    privileged: bool,
    scratch_mb: int | None,
    command: list[str] | None = None,
) -> list[str]:
    """The bwrap command line around a supervisor (or `command`)."""
    bwrap = shutil.which("bwrap") or "bwrap"
    args = [
        bwrap,
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ]
    if privileged:
        args += ["--cap-drop", "ALL"]
        for cap in SUPERVISOR_CAPS:
            args += ["--cap-add", cap]
    else:
        args += ["--unshare-user", "--disable-userns"]
    bound: list[str] = []
    for directory in SYSTEM_DIRS:
        if os.path.islink(directory):
            args += ["--symlink", os.readlink(directory), directory]
        elif os.path.isdir(directory):
            args += ["--ro-bind", directory, directory]
            bound.append(directory)
    for name in ETC_FILES:
        path = f"/etc/{name}"
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    # The throwaway /tmp comes before the interpreter and site-packages binds: a venv that
    # lives under the host's /tmp must be bound on top of it, not hidden by it.
    size = str((scratch_mb or 512) * 1024 * 1024)
    args += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--size",
        size,
        "--tmpfs",
        "/dev/shm",
        "--mqueue",
        "/dev/mqueue",
        "--perms",
        "1777",
        "--size",
        size,
        "--tmpfs",
        "/tmp",
    ]
    extra = sorted(
        {p for p in (*interpreter.needs, *interpreter.site_dirs) if os.path.exists(p)}, key=len
    )
    interp_dir = os.path.dirname(interpreter.path)
    if os.path.isdir(interp_dir):
        extra.append(interp_dir)
    made: set[str] = {"/tmp"}  # exists (tmpfs, mode 1777): never re-created or re-moded
    for path in extra:
        if _covered(path, bound):
            continue
        # bwrap creates missing parents with the caller's umask; the sandbox uid must be able
        # to traverse them.
        parents = []
        parent = os.path.dirname(path)
        while parent not in ("/", "") and parent not in made and not _covered(parent, bound):
            parents.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(parents):
            args += ["--perms", "0755", "--dir", directory]
            made.add(directory)
        args += ["--ro-bind", path, path]
        bound.append(path)
    args += [
        "--perms",
        "0755",
        "--size",
        size,
        "--tmpfs",
        SANDBOX_SCRATCH_ROOT,
        "--ro-bind",
        SUPERVISOR_PATH,
        SANDBOX_SUPERVISOR_PATH,
        "--ro-bind",
        PROTOCOL_PATH,
        SANDBOX_PROTOCOL_PATH,
        "--chdir",
        "/",
    ]
    if command is None:
        command = [interpreter.path, "-I", "-S", SANDBOX_SUPERVISOR_PATH]
    return [*args, "--", *command]


@functools.lru_cache(maxsize=16)
def _bwrap_works(interpreter: Interpreter, privileged: bool) -> tuple[bool, str]:
    if shutil.which("bwrap") is None:
        return False, "bwrap is not installed"
    command = [interpreter.path, "-I", "-S", "-c", "import sys; sys.exit(0)"]
    try:
        done = subprocess.run(
            bwrap_args(interpreter, privileged=privileged, scratch_mb=16, command=command),
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    if done.returncode != 0:
        return False, done.stderr.strip() or f"exit code {done.returncode}"
    return True, ""


@dataclasses.dataclass(frozen=True)
class Plan:
    """A resolved backend + interpreter, shared by every supervisor started from one config."""

    backend: str
    interpreter: Interpreter
    privileged: bool
    scratch_mb: int

    def command(self) -> list[str]:
        if self.backend == "bwrap":
            return bwrap_args(
                self.interpreter, privileged=self.privileged, scratch_mb=self.scratch_mb
            )
        return [self.interpreter.path, "-I", "-S", SUPERVISOR_PATH]

    def init_message(
        self, uid: int | None, scratch_root: str, preload: tuple[str, ...]
    ) -> protocol.Init:
        if self.backend == "bwrap":
            cleanup, sweep_all, sweep_owned = "pidns", ["/tmp", "/dev/shm", "/dev/mqueue"], []
        elif uid is not None:
            cleanup, sweep_all = "uid", []
            sweep_owned = world_writable_dirs()
        else:
            cleanup, sweep_all, sweep_owned = "pgroup", [], []
        return protocol.Init(
            uid=uid,
            scratch_root=scratch_root,
            cleanup=cleanup,
            sweep_all=sweep_all,
            sweep_owned=sweep_owned,
            private_ipc=self.backend == "bwrap",  # its own IPC namespace per supervisor
            site_dirs=list(self.interpreter.site_dirs),
            # Read-only binds that may sit inside a swept directory (a venv under /tmp): the
            # sweep leaves them and their parents alone.
            protect=sorted({*self.interpreter.needs, *self.interpreter.site_dirs}),
            preload=list(preload),
            env=dict(PROGRAM_ENV),
        )

    def describe(self) -> str:
        return (
            f"backend={self.backend} interpreter={self.interpreter.path} "
            f"({self.interpreter.version}) site_dirs={list(self.interpreter.site_dirs)} "
            f"uid_drop={self.privileged}"
        )


SHARED_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue", "/run/lock", "/var/lock")


def world_writable_dirs() -> list[str]:
    """Host directories anyone may write to: the rlimits backend sweeps its uid's files there."""
    found: dict[str, None] = {}
    for path in SHARED_WRITABLE:
        real = os.path.realpath(path)
        try:
            mode = os.stat(real).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode) and mode & stat.S_IWOTH:
            found[real] = None
    return list(found)


@functools.lru_cache(maxsize=16)
def _plan(
    backend: str, python: str | None, site_packages: tuple[str, ...] | None, scratch_mb: int
) -> Plan:
    privileged = os.geteuid() == 0
    interpreter = resolve_interpreter(python, site_packages, privileged)
    if backend in ("auto", "bwrap"):
        works, why = _bwrap_works(interpreter, privileged)
        if works:
            plan = Plan("bwrap", interpreter, privileged, scratch_mb)
            log.info("sandbox: %s", plan.describe())
            return plan
        if backend == "bwrap":
            raise SandboxUnavailable(f"bubblewrap sandbox cannot start here: {why}")
        log.warning("sandbox: bubblewrap unavailable (%s); falling back to rlimits", why)
    plan = Plan("rlimits", interpreter, privileged, scratch_mb)
    log.warning(
        "sandbox: %s. WEAKER isolation: no network, filesystem or PID namespace; only rlimits%s",
        plan.describe(),
        " and a dedicated uid" if privileged else " (not root: same uid as the caller)",
    )
    return plan


def make_plan(config: SandboxConfig) -> Plan:
    """Resolves (and caches) the backend and interpreter for `config`."""
    return _plan(config.backend, config.python, config.site_packages, config.scratch_mb)
