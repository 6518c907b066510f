"""run_dataflow.sh: a complete Dataflow job is built and validated without submitting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

BASE = {
    "PROJECT": "demo-project",
    "REGION": "us-central1",
    "BUCKET": "gs://demo-bucket",
    "INPUT": "gs://demo-bucket/stack/python/*.parquet",
    "PYTHON": sys.executable,
}


def _run(env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "run_dataflow.sh"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_missing_settings_are_named() -> None:
    result = _run({"PROJECT": "", "PYTHON": sys.executable})
    assert result.returncode == 2
    assert "REGION" in result.stderr and "MODEL_SERVER_URL or GPU_TYPE" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "model", [{"MODEL_SERVER_URL": "http://vllm.internal:8000/v1"}, {"GPU_TYPE": "nvidia-l4"}]
)
def test_dry_run_builds_the_whole_job(model: dict[str, str]) -> None:
    result = _run({**BASE, **model, "DRY_RUN": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the job graph was built and validated" in result.stderr


def _flags(env: dict[str, str]) -> list[str]:
    result = _run({**BASE, **env, "PRINT_FLAGS": "1"}, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n")


def _value(flags: list[str], name: str) -> str:
    return flags[flags.index(name) + 1]


@pytest.mark.parametrize(
    ("gpu", "count", "machine"),
    [
        ("nvidia-l4", 2, "g2-standard-24"),  # 15B bf16 (~30 GiB) does not fit one 24 GB L4
        ("nvidia-tesla-a100", 2, "a2-highgpu-2g"),
        ("nvidia-a100-80gb", 1, "a2-ultragpu-1g"),
    ],
)
def test_default_model_gets_gpus_it_fits_on(gpu: str, count: int, machine: str) -> None:
    flags = _flags({"GPU_TYPE": gpu})
    assert _value(flags, "--model") == "bigcode/starcoder2-15b"
    assert _value(flags, "--machine_type") == machine
    assert _value(flags, "--tensor_parallel_size") == str(count)
    assert f"worker_accelerator=type:{gpu};count:{count};" in _value(
        flags, "--dataflow_service_options"
    )


def test_a_gpu_too_small_for_the_model_stops_the_launch() -> None:
    result = _run({**BASE, "GPU_TYPE": "nvidia-l4", "GPU_COUNT": "1", "PRINT_FLAGS": "1"}, 60)
    assert result.returncode == 2
    assert "bigcode/starcoder2-15b needs about 30 GiB" in result.stderr
    # a small model fits one L4, on the one-GPU machine
    flags = _flags({"GPU_TYPE": "nvidia-l4", "MODEL": "smollm2"})
    assert (_value(flags, "--machine_type"), _value(flags, "--tensor_parallel_size")) == (
        "g2-standard-8",
        "1",
    )


def test_hub_token_reaches_the_job() -> None:
    hf = {**BASE, "INPUT": "hf://datasets/bigcode/the-stack-dedup/data/python/*.parquet"}
    secret = "projects/p/secrets/hf-token/versions/latest"
    flags = _flags({**hf, "GPU_TYPE": "nvidia-l4", "HF_TOKEN_SECRET": secret, "HF_TOKEN": "x"})
    assert _value(flags, "--hf_token_secret") == secret and "--hf_token" not in flags
    result = _run(
        {**hf, "MODEL_SERVER_URL": "http://v/v1", "HF_TOKEN": "hf_abc", "PRINT_FLAGS": "1"}
    )
    assert result.returncode == 0
    flags = result.stdout.split("\n")
    assert _value(flags, "--hf_token") == "***" and "hf_abc" not in result.stdout
    assert "HF_TOKEN_SECRET keeps it out" in result.stderr
