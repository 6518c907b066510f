"""The adversarial corpus: hostile programs against both backends, pooled and one-shot.

For every case: the status is the expected one, the canary (a secret file in the host's home,
a world-writable file in a host temporary directory, a host environment variable) is neither
read nor changed, no process of the program is left, and the next ordinary program passes and
sees a clean scratch directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import time
from collections.abc import Callable

import pytest

from sandbox_image import ExecutionResult, SandboxPool, run_program
from sandbox_image.executor import sandbox_processes
from tests.sandbox.conftest import (
    BACKENDS,
    CANARY_ENV,
    ORDINARY_TIMEOUT_S,
    TEST_CONFIG,
    Canary,
    Listener,
    children,
    ordinary_program,
    stray_children,
    supervisor_pids,
)

pytestmark = pytest.mark.timeout(300)  # sandboxed programs


@dataclasses.dataclass
class Context:
    backend: str
    canary: Canary
    listener: Listener
    token: str
    uids: frozenset[int] = frozenset()  # the uids the program ran as: none may be left


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    source: str  # str.format fields: home, tmp, env, port, host_pid, token
    status: str
    timeout_s: float | None = None
    backends: tuple[str, ...] = BACKENDS
    check: Callable[[ExecutionResult, Context], None] | None = None


def _check_daemon(result: ExecutionResult, ctx: Context) -> None:
    time.sleep(1.5)  # the daemon would have written its marker after 1 s
    assert not os.path.exists(f"/tmp/sandbox-daemon-{ctx.token}")
    assert not sandbox_processes(ctx.uids)


def _check_blocked_writes(result: ExecutionResult, ctx: Context) -> None:
    assert result.stdout.strip().splitlines()[-1] == "written: []", result.stdout


def _check_no_secret(result: ExecutionResult, ctx: Context) -> None:
    assert "read-home: denied" in result.stdout, result.stdout
    assert "read-tmp: denied" in result.stdout, result.stdout
    assert f"{CANARY_ENV}" not in result.stdout


def _check_network(result: ExecutionResult, ctx: Context) -> None:
    assert "blocked" in result.stdout, result.stdout
    time.sleep(0.3)
    assert ctx.listener.accepted == 0


def _check_big_stdout(result: ExecutionResult, ctx: Context) -> None:
    assert len(result.stdout.encode()) <= TEST_CONFIG.max_output_bytes + 100
    assert "more bytes not kept" in result.stdout


def _check_signal(number: int) -> Callable[[ExecutionResult, Context], None]:
    def check(result: ExecutionResult, ctx: Context) -> None:
        assert result.signal == number, result

    return check


def _check_stderr(text: str) -> Callable[[ExecutionResult, Context], None]:
    def check(result: ExecutionResult, ctx: Context) -> None:
        assert text in result.stderr, result.stderr

    return check


CASES = [
    Case(
        "fork_bomb",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "timeout",
    ),
    Case(
        "memory_bomb",
        "blocks = []\nwhile True:\n    blocks.append(bytearray(32 << 20))\n",
        "memory",
        timeout_s=30,
    ),
    Case("memory_single_huge", "x = bytearray(1 << 40)\n", "memory"),
    Case("cpu_spin", "while True:\n    pass\n", "timeout"),
    Case("sleep_past_timeout", "import time\ntime.sleep(3600)\n", "timeout"),
    Case(
        "double_forked_daemon",
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(1)\n"
        "        open('/tmp/sandbox-daemon-{token}', 'w').write('still alive')\n"
        "        time.sleep(3600)\n"
        "    os._exit(0)\n"
        "print('parent leaves')\n",
        "passed",
        check=_check_daemon,
    ),
    Case(
        "ignores_sigterm",
        "import os, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "os.fork()\n"
        "time.sleep(3600)\n",
        "timeout",
    ),
    Case(
        "writes_outside_scratch",
        "import os, sys\n"
        "targets = [{home!r}, {tmp!r}, '/usr/lib/sandbox-probe', '/etc/sandbox-probe',\n"
        "           os.path.join(os.path.dirname(os.__file__), 'sandbox-probe')]\n"
        "targets += [os.path.join(p, 'sandbox-probe') for p in sys.path[1:] if os.path.isdir(p)]\n"
        "written = []\n"
        "for target in targets:\n"
        "    try:\n"
        "        with open(target, 'a') as handle:\n"
        "            handle.write('pwned')\n"
        "        written.append(target)\n"
        "    except OSError:\n"
        "        pass\n"
        "print('written:', written)\n",
        "passed",
        check=_check_blocked_writes,
    ),
    Case(
        "fills_scratch",
        "i = 0\nwhile True:\n    with open(f'fill-{{i}}', 'wb') as handle:\n"
        "        handle.write(bytes(32 << 20))\n    i += 1\n",
        "failed",
        timeout_s=30,
        backends=("bwrap",),  # the rlimits backend writes to the host disk: only FSIZE applies
        check=_check_stderr("No space left on device"),
    ),
    Case(
        "file_size_limit",
        "with open('big', 'wb') as handle:\n    for _ in range(1024):\n"
        "        handle.write(bytes(1 << 20))\n",
        "failed",
        timeout_s=30,
        check=_check_stderr("File too large"),
    ),
    Case(
        "reads_secrets",
        "import os\n"
        "for label, path in [('read-home', {home!r}), ('read-tmp', {tmp!r}),\n"
        "                    ('read-host-env', '/proc/{host_pid}/environ'),\n"
        "                    ('read-init-env', '/proc/1/environ')]:\n"
        "    try:\n"
        "        print(label + ':', open(path, 'rb').read()[:2000])\n"
        "    except OSError as exc:\n"
        "        print(label + ': denied', type(exc).__name__)\n"
        "print(dict(os.environ))\n",
        "passed",
        check=_check_no_secret,
    ),
    Case(
        "connects_to_host_server",
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print('blocked', exc)\n",
        "passed",
        backends=("bwrap",),
        check=_check_network,
    ),
    Case(
        "leaves_ipc_objects",
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "IPC_CREAT = 0o1000\n"
        "shm = libc.shmget(0x5A17, 4096, IPC_CREAT | 0o666)\n"
        "msg = libc.msgget(0x5A18, IPC_CREAT | 0o666)\n"
        "sem = libc.semget(0x5A19, 1, IPC_CREAT | 0o666)\n"
        "assert min(shm, msg, sem) >= 0, ctypes.get_errno()\n"
        "libc.shmat.restype = ctypes.c_void_p\n"
        "address = libc.shmat(shm, None, 0)\n"
        "ctypes.memmove(address, b'left for the next program', 25)\n"
        "with open('/dev/shm/left', 'w') as handle:\n"
        "    handle.write('x')\n"
        "print('left', shm, msg, sem)\n",
        "passed",
    ),
    Case(
        "leaves_keys_in_keyrings",
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.syscall.restype = ctypes.c_long\n"
        "for ring in (-3, -4, -5):  # session, user, user-session keyrings\n"
        "    key = libc.syscall(248, b'user', b'sandbox-left', b'left', 4, ctypes.c_int(ring))\n"
        "    print(ring, key, ctypes.get_errno())\n",
        "passed",
        check=lambda result, ctx: None if os.uname().machine == "x86_64" else pytest.skip("x86_64"),
    ),
    Case(
        "kills_its_parent",
        "import os, signal\n"
        "for target in (os.getppid(), 1, -1):\n"
        "    try:\n"
        "        os.kill(target, signal.SIGKILL)\n"
        "    except OSError as exc:\n"
        "        print(target, exc)\n"
        "print('still here')\n",
        "passed",
    ),
    Case(
        "one_gigabyte_of_stdout",
        "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n",
        "passed",
        timeout_s=60,
        check=_check_big_stdout,
    ),
    Case(
        "deep_recursion",
        "def f(n):\n    return f(n + 1)\nf(0)\n",
        "failed",
        check=_check_stderr("RecursionError"),
    ),
    Case(
        "c_stack_overflow",
        "import sys\nsys.setrecursionlimit(10**8)\nnested = []\nfor _ in range(10**6):\n"
        "    nested = [nested]\nrepr(nested)\n",
        "crashed",
        timeout_s=30,
        check=_check_signal(11),
    ),
    Case(
        "segfault_via_ctypes",
        "import ctypes\nctypes.string_at(0)\n",
        "crashed",
        check=_check_signal(11),
    ),
    Case(
        "thousands_of_threads",
        "import threading\nstop = threading.Event()\nfor _ in range(5000):\n"
        "    threading.Thread(target=stop.wait, daemon=True).start()\n",
        "failed",
        check=_check_stderr("can't start new thread"),
    ),
]


def _render(case: Case, ctx: Context) -> str:
    return case.source.format(
        home=str(ctx.canary.home_file),
        tmp=str(ctx.canary.tmp_file),
        port=ctx.listener.port,
        host_pid=os.getpid(),
        token=ctx.token,
    )


def _assert_contained(case: Case, result: ExecutionResult, ctx: Context, before: tuple) -> None:
    assert result.status == case.status, result
    assert result.backend == ctx.backend
    assert ctx.canary.secret not in result.stdout + result.stderr
    assert ctx.canary.snapshot() == before
    assert ctx.uids or os.geteuid() != 0, "no sandbox uid known"
    assert not sandbox_processes(ctx.uids), "a process of the program outlived it"
    if case.check is not None:
        case.check(result, ctx)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_program_in_pool(
    case: Case,
    backend: str,
    pool: SandboxPool,
    pools: dict[str, SandboxPool],
    canary: Canary,
    listener: Listener,
) -> None:
    if backend not in case.backends:
        pytest.skip(f"{case.name} does not apply to the {backend} backend (docs/sandbox.md)")
    ctx = Context(backend, canary, listener, secrets.token_hex(6))
    before = canary.snapshot()
    earlier = children()
    supervisors = supervisor_pids({backend: pool})
    result = pool.run(_render(case, ctx), timeout_s=case.timeout_s)
    ctx.uids = pool.uids
    _assert_contained(case, result, ctx, before)
    # The same supervisor (a pool of one) still runs, and the next program sees a clean slate.
    assert supervisor_pids({backend: pool}) == supervisors
    after = pool.run(ordinary_program(backend), timeout_s=ORDINARY_TIMEOUT_S)
    assert after.passed, after
    assert not stray_children(pools, earlier)


UID_LINE = "import os as _os\nprint('uid', _os.getuid(), flush=True)\n"

ONE_SHOT = [
    c
    for c in CASES
    if c.name
    in {
        "fork_bomb",
        "double_forked_daemon",
        "ignores_sigterm",
        "reads_secrets",
        "connects_to_host_server",
        "segfault_via_ctypes",
        "memory_single_huge",
        "writes_outside_scratch",
    }
]


@pytest.mark.parametrize("case", ONE_SHOT, ids=[c.name for c in ONE_SHOT])
def test_hostile_program_one_shot(
    case: Case,
    backend: str,
    pools: dict[str, SandboxPool],
    canary: Canary,
    listener: Listener,
) -> None:
    if backend not in case.backends:
        pytest.skip(f"{case.name} does not apply to the {backend} backend (docs/sandbox.md)")
    ctx = Context(backend, canary, listener, secrets.token_hex(6))
    before = canary.snapshot()
    earlier = children()
    config = TEST_CONFIG.replace(backend=backend)
    if case.timeout_s is not None:
        config = config.replace(timeout_s=case.timeout_s)
    # The first line names the uid, so leftovers of exactly this run can be looked for.
    result = run_program(UID_LINE + _render(case, ctx), config)
    found = re.match(r"uid (\d+)\n", result.stdout)
    assert found, result
    ctx.uids = frozenset({int(found.group(1))})
    _assert_contained(case, result, ctx, before)
    assert not stray_children(pools, earlier), "a sandbox process of a one-shot run is still alive"
    relaxed = TEST_CONFIG.replace(backend=backend, timeout_s=ORDINARY_TIMEOUT_S)
    after = run_program(ordinary_program(backend), relaxed)
    assert after.passed, after


def test_rlimits_backend_does_not_isolate_the_network(listener: Listener, canary: Canary) -> None:
    """Documents the weaker backend honestly: it reaches host ports (docs/sandbox.md)."""
    from tests.sandbox.conftest import backend_available

    if not backend_available("rlimits"):
        pytest.skip("rlimits backend unavailable")
    source = (
        "import socket\n"
        f"socket.create_connection(('127.0.0.1', {listener.port}), timeout=2).close()\n"
        "print('connected')\n"
    )
    relaxed = TEST_CONFIG.replace(backend="rlimits", timeout_s=ORDINARY_TIMEOUT_S)
    result = run_program(source, relaxed)
    assert result.passed and "connected" in result.stdout, result
