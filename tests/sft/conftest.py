"""Fixtures for the SFT tests: a tiny random model built locally, the final-dataset fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from sft.config import Recipe, recipe_from_dict
from sft.tiny import save_tiny_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FINAL_JSONL = FIXTURES / "sft_final.jsonl"


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    # The CI machine has two shared cores; one intra-op thread is faster and deterministic.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "byte-bpe", "llama")


@pytest.fixture(scope="session")
def final_jsonl() -> Path:
    return FINAL_JSONL


@pytest.fixture(scope="session")
def pool() -> Iterator[Any]:
    from sandbox_image import SandboxConfig, SandboxPool

    # A generous limit: some reference solutions (MBPP/123) need seconds of CPU, and the CI
    # machine may be busy; these tests are about correctness, not limits.
    with SandboxPool(SandboxConfig(timeout_s=60.0), workers=2) as pool:
        yield pool


def make_recipe(
    model_dir: Path, output_dir: Path, data: dict[str, Any] | None = None, **training: Any
) -> Recipe:
    base = {
        "output_dir": str(output_dir),
        "global_batch_size": 4,
        "micro_batch_size": 2,
        "progress_bar": False,
        "save_every_steps": None,
    }
    base.update(training)
    return recipe_from_dict(
        {
            "model": {"name_or_path": str(model_dir)},
            "data": {"path": str(FINAL_JSONL), **(data or {})},
            "training": base,
        }
    )
