"""The pipeline through PortableRunner against a separate job service and an EXTERNAL worker
pool: the worker model of Flink or Spark on Kubernetes."""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from beam_pipeline.main import run
from tests.conftest import FNAPI
from tests.helpers import read_jsonl_dir

pytestmark = pytest.mark.timeout(600)  # whole pipeline on the portable runner and a job service


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listening on {port}")


@contextlib.contextmanager
def _service(args: list[str], port: int, log: pathlib.Path) -> Iterator[None]:
    # The worker pool starts SDK workers as `python ...`: the venv's python must come first.
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=handle,
            stderr=handle,
            env=env,
            start_new_session=True,
        )
    try:
        _wait_for_port(port, proc)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def portable_endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    logs = tmp_path_factory.mktemp("portable")
    job_port, pool_port = _free_port(), _free_port()
    job = ["apache_beam.runners.portability.local_job_service_main", f"--port={job_port}"]
    pool = ["apache_beam.runners.worker.worker_pool_main", f"--service_port={pool_port}"]
    with _service(job, job_port, logs / "job.log"), _service(pool, pool_port, logs / "pool.log"):
        yield [
            "--runner=PortableRunner",
            f"--job_endpoint=localhost:{job_port}",
            "--environment_type=EXTERNAL",
            f"--environment_config=localhost:{pool_port}",
        ]


def test_seed_stage_on_portable_runner_with_external_workers(
    tmp_path: pathlib.Path, bundled_shard: str, portable_endpoints: list[str]
) -> None:
    common = [f"--input={bundled_shard}", "--to_stage=seeds", "--max_seeds=200"]
    portable = run([*common, f"--output_dir={tmp_path / 'portable'}", *portable_endpoints])
    local = run([*common, f"--output_dir={tmp_path / 'local'}", *FNAPI])
    assert portable["invariant_ok"], portable["problems"]
    ids = {s["id"] for s in read_jsonl_dir(tmp_path / "portable" / "seeds")}
    assert len(ids) == 200
    assert ids == {s["id"] for s in read_jsonl_dir(tmp_path / "local" / "seeds")}
    assert portable["stages"]["seeds.filter"] == local["stages"]["seeds.filter"]
