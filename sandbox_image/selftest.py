"""`python -m sandbox_image selftest`: checks, on this machine, that the sandbox isolates.

Each check runs a small hostile or ordinary program in a fork-server pool and inspects the
result and the host. A check that the chosen backend does not claim to pass (the network on the
rlimits backend) is reported as WEAK, not hidden.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sandbox_image.config import SandboxConfig
from sandbox_image.executor import SandboxPool, sandbox_processes
from sandbox_image.launch import SandboxUnavailable

CheckResult = tuple[str, str]  # (PASS | FAIL | WEAK | N/A, detail)


def _verdict(ok: bool, detail: str) -> CheckResult:
    return ("PASS" if ok else "FAIL"), detail


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


@contextlib.contextmanager
def _listener() -> Iterator[tuple[int, list[int]]]:
    """A TCP server on 127.0.0.1 counting the connections it accepts."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(timeout=2)
        server.close()


def _checks(
    pool: SandboxPool, secret: str, home_file: Path, tmp_file: Path
) -> Iterator[tuple[str, Callable[[], CheckResult]]]:
    bwrap = pool.backend == "bwrap"
    privileged = pool.plan.privileged

    def ordinary() -> CheckResult:
        r = pool.run("print(sum(range(10)))")
        return ("PASS" if r.passed and r.stdout.strip() == "45" else "FAIL"), r.status

    def unprivileged() -> CheckResult:
        r = pool.run(
            "import os\ncaps = [l.split()[1] for l in open('/proc/self/status') "
            "if l.startswith('CapEff')][0]\nprint(os.getuid(), caps)"
        )
        uid, caps = [*r.stdout.split(), "?", "?"][:2]
        ok = r.passed and int(caps, 16) == 0 and (uid != "0" or not privileged)
        return ("PASS" if ok else "FAIL"), f"uid={uid} CapEff={caps}"

    def environment() -> CheckResult:
        r = pool.run("import os, json; print(json.dumps(dict(os.environ)))")
        leaked = secret in r.stdout
        count = len(json.loads(r.stdout)) if r.passed else 0
        return _verdict(r.passed and not leaked, f"{count} variables")

    def home() -> CheckResult:
        r = pool.run(f"print(open({str(home_file)!r}).read())")
        leaked = secret in r.stdout
        return _verdict(not leaked and not r.passed, _last_line(r.stderr))

    def host_tmp() -> CheckResult:
        r = pool.run(f"print(open({str(tmp_file)!r}).read())")
        if secret in r.stdout:
            return ("WEAK" if not bwrap else "FAIL"), "host temporary files are readable"
        return "PASS", "not visible"

    def read_only() -> CheckResult:
        r = pool.run(
            "import os, sys\nhits = []\n"
            "for d in ['/usr', '/usr/lib', os.path.dirname(os.__file__)] + sys.path[1:]:\n"
            "    try:\n        open(os.path.join(d, 'sandbox-probe'), 'w').close()\n"
            "        hits.append(d)\n"
            "    except OSError:\n        pass\nprint(hits)"
        )
        return ("PASS" if r.passed and r.stdout.strip() == "[]" else "FAIL"), r.stdout.strip()

    def network() -> CheckResult:
        with _listener() as (port, accepted):
            r = pool.run(
                "import socket\ntry:\n"
                f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                "    print('connected')\n"
                "except OSError as e:\n    print('blocked', e)"
            )
            time.sleep(0.3)
        if accepted or "connected" in r.stdout:
            return ("FAIL" if bwrap else "WEAK"), "reached a host port (no network namespace)"
        return "PASS", r.stdout.strip()

    def timeout() -> CheckResult:
        r = pool.run("while True:\n    pass")
        return _verdict(r.status == "timeout", f"{r.status} after {r.duration_s:.2f}s")

    def memory() -> CheckResult:
        r = pool.run(
            "blocks = []\nwhile True:\n    blocks.append(bytearray(32 << 20))", timeout_s=10
        )
        return ("PASS" if r.status == "memory" else "FAIL"), r.status

    def fork_bomb() -> CheckResult:
        r = pool.run(
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
        )
        left = sandbox_processes(pool.uids)
        ok = r.status == "timeout" and not left
        return ("PASS" if ok else "FAIL"), f"{r.status}, {len(left)} processes left"

    def daemon() -> CheckResult:
        r = pool.run(
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        time.sleep(30)\n    os._exit(0)\nprint('parent exits')"
        )
        left = sandbox_processes(pool.uids)
        return ("PASS" if r.passed and not left else "FAIL"), f"{len(left)} processes left"

    def fresh_scratch() -> CheckResult:
        pool.run("open('left-behind', 'w').write('x')")
        r = pool.run("import os\nprint(sorted(os.listdir('.')))")
        return ("PASS" if r.stdout.strip() == "['main.py']" else "FAIL"), r.stdout.strip()

    def numpy() -> CheckResult:
        r = pool.run("import numpy, pandas\nprint(numpy.__version__, pandas.__version__)")
        if not r.passed and "No module named" in r.stderr:
            return "N/A", "numpy/pandas not installed for the sandbox interpreter"
        return ("PASS" if r.passed else "FAIL"), r.stdout.strip() or r.stderr.strip()[-200:]

    yield "ordinary program passes", ordinary
    yield "unprivileged uid, no capabilities", unprivileged
    yield "environment cleared", environment
    yield "host home directory unreadable", home
    yield "host temporary files hidden", host_tmp
    yield "interpreter and system read-only", read_only
    yield "no network to host ports", network
    yield "wall-clock timeout", timeout
    yield "address-space limit", memory
    yield "fork bomb contained and cleaned", fork_bomb
    yield "double-forked daemon killed", daemon
    yield "fresh scratch per program", fresh_scratch
    yield "numpy and pandas importable", numpy


def run_selftest(backend: str = "auto") -> int:
    secret = "canary-" + secrets.token_hex(8)
    home_file = Path.home() / f".sandbox-selftest-{secrets.token_hex(4)}"
    env_key = "SANDBOX_SELFTEST_SECRET"
    config = SandboxConfig(backend=backend, timeout_s=2.0, memory_mb=256, max_processes=64)
    failures = 0
    os.environ[env_key] = secret
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as tmp:
        tmp.write(secret)
    tmp_file = Path(tmp.name)
    os.chmod(tmp_file, 0o644)
    try:
        home_file.write_text(secret)
        try:
            pool = SandboxPool(config, workers=1)
        except SandboxUnavailable as exc:
            print(f"FAIL  sandbox unavailable: {exc}")
            return 1
        with pool:
            print(f"backend: {pool.plan.describe()}")
            for name, check in _checks(pool, secret, home_file, tmp_file):
                try:
                    verdict, detail = check()
                except Exception as exc:
                    verdict, detail = "FAIL", f"{type(exc).__name__}: {exc}"
                failures += verdict == "FAIL"
                print(f"{verdict:5} {name}: {detail}")
    finally:
        os.environ.pop(env_key, None)
        home_file.unlink(missing_ok=True)
        tmp_file.unlink(missing_ok=True)
    print("selftest:", "FAILED" if failures else "ok")
    return 1 if failures else 0
