"""Pure pieces of the sandbox: status mapping, output capture, config, command line, paths."""

from __future__ import annotations

import os
import signal
import stat
import tempfile
from pathlib import Path

import pytest

from sandbox_image import ExecutionResult, SandboxConfig, protocol
from sandbox_image.launch import Interpreter, _accessible_to_others, bwrap_args
from sandbox_image.supervisor import (
    _Capture,
    classify,
    clear_directory,
    judge_time,
    program_time,
    remove_path,
)

pytestmark = pytest.mark.timeout(300)  # sandboxed programs


@pytest.mark.parametrize(
    ("exit_code", "sig", "timed_out", "cpu", "memory", "status"),
    [
        (0, None, False, False, False, "passed"),
        (1, None, False, False, False, "failed"),
        (3, None, False, False, False, "failed"),
        (None, signal.SIGKILL, True, False, False, "timeout"),
        (None, signal.SIGXCPU, False, False, False, "timeout"),
        (None, signal.SIGKILL, False, True, False, "timeout"),
        (1, None, False, False, True, "memory"),
        (None, signal.SIGSEGV, False, False, False, "crashed"),
        (None, signal.SIGABRT, False, False, False, "crashed"),
        (None, signal.SIGKILL, False, False, False, "crashed"),
        (0, None, True, False, False, "timeout"),
    ],
)
def test_classify(
    exit_code: int | None, sig: int | None, timed_out: bool, cpu: bool, memory: bool, status: str
) -> None:
    got = classify(exit_code, sig, timed_out=timed_out, cpu_exceeded=cpu, memory_error=memory)
    assert got == status


def test_classify_starved_wins_over_how_the_kill_looks() -> None:
    kwargs = {"timed_out": False, "cpu_exceeded": False, "memory_error": False}
    assert classify(None, signal.SIGKILL, starved=True, **kwargs) == "starved"
    assert classify(None, signal.SIGKILL, starved=False, **kwargs) == "crashed"


# (elapsed, cpu, run-queue wait, limit 10 s, wall cap 30 s) -> decision at a deadline
@pytest.mark.parametrize(
    ("elapsed", "cpu", "wait", "decision"),
    [
        (10.0, 9.9, 0.1, "timeout"),  # a CPU loop on an idle core
        (10.0, 0.01, 0.0, "timeout"),  # asleep (or blocked) of its own accord: not the machine
        (10.0, 3.0, 0.05, "timeout"),  # some CPU, then waits on a lock
        (10.0, 5.0, 5.0, None),  # half a core: its own time is 5 s, so it runs on
        (20.0, 10.0, 10.0, "timeout"),  # ... and has had its 10 s at 20 s of wall clock
        (30.0, 7.5, 22.5, "starved"),  # a quarter of a core: the wall clock ran out first
        (10.0, 10.0, 30.0, "timeout"),  # many threads waiting for each other: its own CPU
        (10.0, 0.5, None, None),  # no run-delay accounting: time off a CPU counts as waiting
        (30.0, 0.5, None, "starved"),  # ... so a sleeper is starved, as method.md reads
        (12.0, 10.0, None, "timeout"),
    ],
)
def test_judge_time(elapsed: float, cpu: float, wait: float | None, decision: str | None) -> None:
    assert judge_time(elapsed, cpu, wait, 10.0, 30.0) == decision


def test_program_time_counts_the_processes_below_a_root() -> None:
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: pass"])
    try:
        time.sleep(0.3)
        cpu, wait = program_time(os.getpid())
        assert cpu > 0 and wait is not None and wait >= 0
        # Nothing runs below the child: no time.
        assert program_time(child.pid) == (0.0, 0.0)
    finally:
        child.kill()
        child.wait()


def test_protocol_messages_round_trip_and_refuse_strangers() -> None:
    import json

    job = protocol.Job(
        source="print(1)",
        timeout_s=2.0,
        max_wall_s=6.0,
        memory_mb=512,
        cpu_s=3,
        nproc=64,
        nofile=64,
        fsize_mb=16,
        max_output=100,
        stdin="x",
    )
    assert protocol.Job.from_wire(json.loads(job.to_wire())) == job
    reply = protocol.Reply(status="timeout", signal=9, cpu_s=1.5, run_wait_s=0.25)
    assert protocol.Reply.from_wire(json.loads(reply.to_wire())) == reply
    init = protocol.Init(scratch_root="/sandbox", uid=7, cleanup="pidns", env={"A": "b"})
    assert protocol.Init.from_wire(json.loads(init.to_wire())) == init
    with pytest.raises(protocol.ProtocolError, match="unknown fields"):
        protocol.Reply.from_wire({"status": "passed", "exit_cod": 0})
    with pytest.raises(protocol.ProtocolError):
        protocol.Job.from_wire({"source": "print(1)"})  # limits missing
    with pytest.raises(protocol.ProtocolError):
        protocol.Init(scratch_root="/sandbox", cleanup="everything")


def test_capture_keeps_a_prefix_and_counts_the_rest() -> None:
    capture = _Capture(10)
    for chunk in (b"hello ", b"world, ", b"more"):
        capture.add(chunk)
    assert bytes(capture.data) == b"hello worl"
    assert capture.dropped == 7
    assert capture.text() == "hello worl\n[sandbox: 7 more bytes not kept]"
    empty = _Capture(0)
    empty.add(b"abc")
    assert empty.text() == "\n[sandbox: 3 more bytes not kept]"


def test_capture_decodes_with_replacement() -> None:
    capture = _Capture(100)
    capture.add(b"\xffok")
    assert capture.text() == "\ufffdok"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backend": "docker"},
        {"timeout_s": 0},
        {"memory_mb": 0},
        {"max_open_files": 8},
        {"max_attempts": 0},
        {"cpu_time_s": -1},
        {"uid_base": 0},
        {"max_wall_factor": 0.5},
        {"machine_slots": 0},
    ],
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SandboxConfig(**kwargs)


def test_config_defaults_follow_the_method() -> None:
    config = SandboxConfig()
    assert (config.timeout_s, config.memory_mb) == (10.0, 4096)
    assert config.cpu_limit_s == 11
    assert SandboxConfig(timeout_s=2.5).cpu_limit_s == 4
    assert SandboxConfig(site_packages=["/x"]).site_packages == ("/x",)


def test_result_round_trip() -> None:
    result = ExecutionResult("failed", 1, None, 0.5, "out", "err", "bwrap", cpu_s=0.4)
    assert ExecutionResult.from_dict({**result.to_dict(), "extra": 1}) == result
    assert not result.passed and ExecutionResult("passed").passed
    assert result.is_verdict and ExecutionResult("timeout").is_verdict
    assert not ExecutionResult("starved").is_verdict
    assert not ExecutionResult("sandbox_error").is_verdict
    error = ExecutionResult.sandbox_error("broke", backend="rlimits")
    assert (error.status, error.stderr, error.backend) == ("sandbox_error", "broke", "rlimits")


def test_bwrap_command_isolates() -> None:
    interpreter = Interpreter(
        path="/usr/bin/python3",
        version="3.11.2",
        needs=("/usr",),
        site_dirs=("/opt/env/lib/python3.11/site-packages",),
    )
    args = bwrap_args(interpreter, privileged=True, scratch_mb=64)
    for flag in ("--unshare-net", "--unshare-pid", "--unshare-ipc", "--clearenv"):
        assert flag in args
    assert "--die-with-parent" in args and "--new-session" in args
    assert "--bind" not in args  # nothing of the host is writable
    sources = [args[i + 1] for i, a in enumerate(args) if a == "--ro-bind"]
    assert not any(s in ("/", "/root", "/home", "/tmp") or s.startswith("/root/") for s in sources)
    # The uid drop needs these capabilities in the supervisor; programs never hold them.
    assert args[args.index("--cap-drop") + 1] == "ALL"
    assert args[-4:] == ["/usr/bin/python3", "-I", "-S", "/opt/sandbox/supervisor.py"]
    # The supervisor loads its protocol from beside itself.
    assert args[args.index("/opt/sandbox/protocol.py") - 2] == "--ro-bind"
    unprivileged = bwrap_args(interpreter, privileged=False, scratch_mb=64)
    assert "--unshare-user" in unprivileged and "--cap-add" not in unprivileged


def test_accessible_to_others() -> None:
    # pytest's tmp_path lies under a 0700 directory; this check needs an open path to /.
    with tempfile.TemporaryDirectory() as top:
        os.chmod(top, 0o755)
        private = Path(top) / "private"
        private.mkdir(mode=0o700)
        exe = private / "python"
        exe.write_text("")
        exe.chmod(0o755)
        assert not _accessible_to_others(str(exe))
        private.chmod(0o755)
        assert _accessible_to_others(str(exe))
        exe.chmod(0o700)
        assert not _accessible_to_others(str(exe))


def test_remove_path_handles_hostile_permissions(tmp_path: Path) -> None:
    root = tmp_path / "work"
    locked = root / "a" / "b"
    locked.mkdir(parents=True)
    (locked / "f").write_text("x")
    os.symlink("/etc/hostname", root / "link")
    (root / "a").chmod(0)
    remove_path(str(root))
    assert not root.exists()
    assert Path("/etc").exists()


def test_clear_directory_respects_owner(tmp_path: Path) -> None:
    (tmp_path / "mine").write_text("x")
    (tmp_path / "dir").mkdir()
    clear_directory(str(tmp_path), owner=os.getuid() + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "mine"]
    clear_directory(str(tmp_path), owner=os.getuid())
    assert list(tmp_path.iterdir()) == []
    assert stat.S_ISDIR(tmp_path.stat().st_mode)


def test_environment_under_tmp_is_bound_on_top_of_the_private_tmp() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as top:  # e.g. a CI checkout under /tmp
        site = os.path.join(top, ".venv", "lib", "python3.11", "site-packages")
        os.makedirs(site)
        interpreter = Interpreter(
            path="/usr/bin/python3", version="3.11.2", needs=("/usr",), site_dirs=(site,)
        )
        args = bwrap_args(interpreter, privileged=True, scratch_mb=64)
    tmpfs = next(i for i, a in enumerate(args) if a == "/tmp" and args[i - 1] == "--tmpfs")
    bind = args.index(site)
    assert args[bind - 1] == "--ro-bind" and tmpfs < bind
    assert args[tmpfs:bind].count("--dir") == 4  # parents made traversable in the private /tmp


def test_clear_directory_keeps_protected_paths(tmp_path: Path) -> None:
    (tmp_path / "ci" / "venv").mkdir(parents=True)
    (tmp_path / "ci" / "venv" / "mod.py").write_text("x = 1")
    (tmp_path / "left-by-program").write_text("x")
    clear_directory(str(tmp_path), keep=(str(tmp_path / "ci" / "venv"),))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ci"]
    assert (tmp_path / "ci" / "venv" / "mod.py").exists()
