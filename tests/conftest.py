"""Fixtures shared by every test package."""

from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Beam's local runners and vLLM both read these; keep tests off the network and quiet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def mbpp_path() -> pathlib.Path:
    path = SHARED / "data" / "mbpp.jsonl"
    if not path.exists():
        pytest.skip("../shared/data/mbpp.jsonl is not beside this checkout")
    return path


@pytest.fixture(scope="session")
def bundled_shard() -> str:
    from beam_pipeline.options import bundled_shard

    return bundled_shard()


FNAPI = ["--runner=FnApiRunner"]
MULTIPROCESS = [
    "--runner=FnApiRunner",
    "--direct_num_workers=2",
    "--direct_running_mode=multi_processing",
]
