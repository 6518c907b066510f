"""Pure pieces of the sandbox: status mapping, output capture, config, command line, paths."""

from __future__ import annotations

import os
import signal
import stat
import tempfile
from pathlib import Path

import pytest

from sandbox_image import ExecutionResult, SandboxConfig
from sandbox_image.launch import Interpreter, _accessible_to_others, bwrap_args
from sandbox_image.supervisor import _Capture, classify, clear_directory, remove_path


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
    result = ExecutionResult("failed", 1, None, 0.5, "out", "err", "bwrap")
    assert ExecutionResult.from_dict({**result.to_dict(), "extra": 1}) == result
    assert not result.passed and ExecutionResult("passed").passed
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
