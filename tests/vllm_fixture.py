"""The real vLLM CPU server for tests marked `vllm`: SmolLM2-135M, started once per session.

The model folder is prepared with `python -m model_server prepare` (in a subprocess, so the
test process never holds torch and the weights) into a persistent cache,
`$SELFCODEALIGN_CACHE/models/smollm2` (default `~/.cache/selfcodealign/models/smollm2`), so a
CI machine converts it once. The server is a process-wide singleton: every test module that
imports the fixture shares it; it stops when the session ends (at interpreter exit at the
latest, or through its supervisor if the test process dies).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_server.prepare import default_model_dir
from model_server.serve import ServeConfig, VLLMServer

MODEL = "smollm2"
SERVED_NAME = "smollm2"
REPO = Path(__file__).resolve().parents[1]

_LOCK = threading.Lock()
_SERVER: VLLMServer | None = None
_FAILURE: str | None = None


def prepared_model_dir() -> Path:
    out = default_model_dir(MODEL)
    proc = subprocess.run(
        [sys.executable, "-m", "model_server", "prepare", "--model", MODEL, "--out", str(out)],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"prepare {MODEL} failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def shared_server() -> VLLMServer:
    """Starts the server on first use; later calls return the same one."""
    global _SERVER, _FAILURE
    with _LOCK:
        if _FAILURE is not None:
            raise RuntimeError(_FAILURE)
        if _SERVER is not None and _SERVER.alive():
            return _SERVER
        try:
            log_dir = Path(tempfile.gettempdir()) / "selfcodealign-test-logs"
            log_dir.mkdir(exist_ok=True)
            config = ServeConfig(
                model=str(prepared_model_dir()),
                served_model_name=SERVED_NAME,
                max_model_len=4096,
                cpu_kvcache_gib=float(os.environ.get("SELFCODEALIGN_TEST_KV_GIB", "2")),
                log_path=str(log_dir / f"vllm-{os.getpid()}.log"),
            )
            server = VLLMServer(config)
            server.start()
        except Exception as exc:
            _FAILURE = f"could not start the test vLLM server: {exc}"
            raise
        _SERVER = server
        return server


def stop_shared_server() -> None:
    global _SERVER
    with _LOCK:
        if _SERVER is not None:
            _SERVER.stop()
            _SERVER = None


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[VLLMServer]:
    yield shared_server()
    stop_shared_server()
