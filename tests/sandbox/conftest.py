"""Fixtures for the sandbox corpus: a planted canary, pools per backend, leftover checks."""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_image import SandboxConfig, SandboxPool, SandboxUnavailable, make_plan
from sandbox_image.executor import sandbox_processes
from sandbox_image.supervisor import _children_of

BACKENDS = ("bwrap", "rlimits")
CANARY_ENV = "SANDBOX_TEST_CANARY"

# Small limits keep the corpus quick; the wall clock is overridden per case where needed. The
# limit counts a program's own time; a generous wall-clock cap lets a CPU loop have all of it
# on a shared machine (down to a twentieth of a core) and so end as a timeout, not starved.
TEST_CONFIG = SandboxConfig(timeout_s=2.0, memory_mb=512, max_processes=64, max_wall_factor=20.0)
# Ordinary programs must never time out because a shared machine is busy.
ORDINARY_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True)
class Canary:
    """A secret in the host's home directory and in the host environment."""

    secret: str
    home_file: Path
    tmp_file: Path

    def snapshot(self) -> tuple[str, int, str, int]:
        home, tmp = self.home_file.stat(), self.tmp_file.stat()
        return (
            self.home_file.read_text(),
            home.st_mtime_ns,
            self.tmp_file.read_text(),
            tmp.st_mtime_ns,
        )


@pytest.fixture(scope="session")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Canary]:
    secret = "canary-" + secrets.token_hex(12)
    home_file = Path.home() / f".sandbox-test-canary-{secrets.token_hex(4)}"
    home_file.write_text(secret)
    home_file.chmod(0o644)  # readable by anyone who can reach it: the directory must protect it
    tmp_dir = tmp_path_factory.mktemp("canary")
    tmp_file = tmp_dir / "secret.txt"
    tmp_file.write_text(secret)
    tmp_file.chmod(0o666)
    os.environ[CANARY_ENV] = secret
    before = None
    try:
        canary = Canary(secret, home_file, tmp_file)
        before = canary.snapshot()
        yield canary
        assert canary.snapshot() == before, "a sandboxed program changed a host file"
    finally:
        os.environ.pop(CANARY_ENV, None)
        home_file.unlink(missing_ok=True)


def backend_available(backend: str) -> bool:
    try:
        return make_plan(TEST_CONFIG.replace(backend=backend)).backend == backend
    except SandboxUnavailable:
        return False


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if not backend_available(request.param):
        pytest.skip(f"{request.param} backend is not available on this machine")
    return request.param


@pytest.fixture(scope="session")
def pools(canary: Canary) -> Iterator[dict[str, SandboxPool]]:
    """One fork-server pool per backend, started after the canary is planted."""
    made: dict[str, SandboxPool] = {}
    yield made
    uids = {uid for pool in made.values() for uid in pool.uids}
    for pool in made.values():
        pool.close()
    assert not sandbox_processes(uids), "sandbox processes outlived their pools"


@pytest.fixture()
def pool(pools: dict[str, SandboxPool], backend: str) -> SandboxPool:
    if backend not in pools:
        # One supervisor: "the next program" is guaranteed to run where the hostile one ran.
        pools[backend] = SandboxPool(TEST_CONFIG.replace(backend=backend), workers=1)
    return pools[backend]


def ordinary_program(backend: str) -> str:
    """The program run after every hostile one: it must pass and see a clean slate."""
    lines = [
        "import os",
        "assert sorted(os.listdir('.')) == ['main.py'], os.listdir('.')",
        # No System V IPC object of this uid is left by an earlier program.
        "for kind in ('shm', 'msg', 'sem'):",
        "    with open('/proc/sysvipc/' + kind) as handle:",
        "        header = handle.readline().split()",
        "        uids = [int(row.split()[header.index('uid')]) for row in handle if row.strip()]",
        "    assert os.getuid() not in uids, (kind, uids)",
        # No key an earlier program stored in a keyring this one can reach.
        "import ctypes, platform",
        "if platform.machine() == 'x86_64':",
        "    libc = ctypes.CDLL(None, use_errno=True)",
        "    libc.syscall.restype = ctypes.c_long",
        "    found = libc.syscall(249, b'user', b'sandbox-left', None, ctypes.c_int(0))",
        "    assert found < 0, 'a key left by an earlier program is readable'",
    ]
    if backend == "bwrap":  # private /tmp and /dev/shm: both must be empty again
        lines += [
            # (but for the read-only bind of an environment that lives under the host's /tmp)
            "import sys",
            "bound = {p.split('/')[2] for p in sys.path if p.startswith('/tmp/')}",
            "assert set(os.listdir('/tmp')) <= bound, os.listdir('/tmp')",
            "assert os.listdir('/dev/shm') == [], os.listdir('/dev/shm')",
            "assert os.listdir('/dev/mqueue') == [], os.listdir('/dev/mqueue')",
        ]
    lines.append("print('ordinary ok')")
    return "\n".join(lines) + "\n"


def supervisor_pids(pools: dict[str, SandboxPool]) -> set[int]:
    return {s.proc.pid for p in pools.values() for s in list(p._live) if s.proc is not None}


def children() -> set[int]:
    return set(_children_of(os.getpid()))


def stray_children(pools: dict[str, SandboxPool], earlier: set[int]) -> list[int]:
    """New children of the test process that are neither pool supervisors nor already reaped.

    Children alive before the test (`earlier`) belong to other fixtures of the session, such as
    a model server that lingers for the next test, and are not the sandbox's.
    """
    return [
        pid
        for pid in _children_of(os.getpid())
        if pid not in supervisor_pids(pools) and pid not in earlier
    ]


class Listener:
    """A TCP server on 127.0.0.1 that counts accepted connections."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.port = self.server.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.server.close()


@pytest.fixture()
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()
