"""VLLMServer: command line and environment, lifecycle, no orphans (scripted stand-in)."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from model_server import managed
from model_server.serve import (
    ServeConfig,
    ServerStartError,
    VLLMServer,
    _ranges,
    server_command,
    server_env,
)
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(300)  # server processes

SCRIPTED = (sys.executable, "-m", "tests.model_server.scripted")


def _flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_cpu_command_turns_chunked_prefill_off_and_sizes_the_step() -> None:
    cmd = server_command(ServeConfig(model="/m", max_model_len=4096), 8001, "cpu")
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(cmd, "--port") == "8001" and _flag(cmd, "--model") == "/m"
    assert "--no-enable-chunked-prefill" in cmd and "--enforce-eager" in cmd
    assert int(_flag(cmd, "--max-num-batched-tokens")) >= 4096
    assert "--tensor-parallel-size" not in cmd


def test_gpu_command_passes_parallelism_and_memory_flags() -> None:
    config = ServeConfig(
        model="org/model",
        tensor_parallel_size=4,
        gpu_memory_utilization=0.85,
        max_num_seqs=256,
        served_model_name="m",
    )
    cmd = server_command(config, 9000, "gpu")
    assert _flag(cmd, "--tensor-parallel-size") == "4"
    assert _flag(cmd, "--gpu-memory-utilization") == "0.85"
    assert _flag(cmd, "--max-num-seqs") == "256"
    assert _flag(cmd, "--served-model-name") == "m"
    assert "--enable-prefix-caching" in cmd
    assert "--no-enable-chunked-prefill" not in cmd and "--enforce-eager" not in cmd


def test_explicit_chunked_prefill_and_extra_args() -> None:
    cmd = server_command(
        ServeConfig(model="/m", chunked_prefill=True, extra_args=("--foo", "1")), 1, "cpu"
    )
    assert "--enable-chunked-prefill" in cmd and cmd[-2:] == ["--foo", "1"]


def test_cpu_env_binds_every_core_and_reserves_none() -> None:
    env = server_env(ServeConfig(model="/m", cpu_kvcache_gib=3), "cpu", base={"PATH": "/bin"})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == _ranges(sorted(os.sched_getaffinity(0)))
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    gpu_env = server_env(ServeConfig(model="/m"), "gpu", base={})
    assert "VLLM_CPU_KVCACHE_SPACE" not in gpu_env


def test_ranges() -> None:
    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert _ranges([3]) == "3"
    assert _ranges([]) == ""


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        ServeConfig(model="/m", device="tpu")
    with pytest.raises(ValueError):
        ServeConfig(model="/m", tensor_parallel_size=0)


def _scripted_config(tmp_path: pathlib.Path, **kw: object) -> ServeConfig:
    return ServeConfig(
        model=str(tmp_path),
        served_model_name="stand-in",
        device="cpu",
        launcher=SCRIPTED,
        log_path=str(tmp_path / "server.log"),
        stop_grace_s=2.0,
        **kw,
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies still count for killpg; look at the process table instead.
    out = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True)
    return any(not s.startswith("Z") for s in out.stdout.split())


def test_server_starts_answers_and_stops_with_its_group(tmp_path: pathlib.Path) -> None:
    with VLLMServer(_scripted_config(tmp_path)) as server:
        assert server.alive()
        assert httpx.get(f"{server.base_url}/health").status_code == 200
        pgid = server.process.pid
        assert _group_alive(pgid)
    assert not _group_alive(pgid)
    server.stop()  # idempotent


def test_start_failure_reports_the_log(tmp_path: pathlib.Path) -> None:
    config = ServeConfig(
        model=str(tmp_path),
        device="cpu",
        launcher=(sys.executable, "-c", "import sys; print('boom: bad flag'); sys.exit(3)"),
        log_path=str(tmp_path / "server.log"),
    )
    with pytest.raises(ServerStartError, match="boom: bad flag"):
        VLLMServer(config).start()


def test_no_orphans_when_the_caller_is_killed(tmp_path: pathlib.Path) -> None:
    """SIGKILL the process that owns the server: the supervisor must stop the server."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from model_server.serve import ServeConfig, VLLMServer
        config = ServeConfig(model={str(tmp_path)!r}, served_model_name="stand-in", device="cpu",
                             launcher={SCRIPTED!r}, log_path={str(tmp_path / "s.log")!r})
        server = VLLMServer(config)
        server.start()
        print(server.process.pid, flush=True)
        time.sleep(600)
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=str(REPO)
    )
    try:
        pgid = int(owner.stdout.readline())
        assert _group_alive(pgid)
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        deadline = time.monotonic() + 20
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(pgid)
    finally:
        if owner.poll() is None:
            owner.kill()


def test_managed_server_is_shared_and_stopped_after_last_release(tmp_path: pathlib.Path) -> None:
    config = _scripted_config(tmp_path)
    first = managed.acquire_server(config)
    second = managed.acquire_server(config)
    assert first is second
    managed.release_server(config, linger_s=0)
    assert first.alive()
    managed.release_server(config, linger_s=0)
    assert not first.alive()


def test_managed_server_lingers_for_the_next_user(tmp_path: pathlib.Path) -> None:
    config = _scripted_config(tmp_path)
    server = managed.acquire_server(config)
    managed.release_server(config, linger_s=30)
    again = managed.acquire_server(config)  # within the linger period: same process
    assert again is server and server.alive()
    managed.release_server(config, linger_s=0.1)
    deadline = time.monotonic() + 10
    while server.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not server.alive()
    managed.shutdown_all()
