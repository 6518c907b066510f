"""torchrun with two CPU processes (gloo): DDP and FSDP reproduce the single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sft.train import train

from .conftest import FINAL_JSONL, make_recipe

pytestmark = pytest.mark.timeout(600)  # multi-process training

SETTINGS = {
    "max_steps": 4,
    "global_batch_size": 6,
    "micro_batch_size": 2,
    "learning_rate": 3e-3,
    "save_every_steps": 2,
}


def _torchrun(model_dir: Path, out: Path, strategy: str, extra: list[str]) -> list[float]:
    recipe = out.parent / f"{out.name}.yaml"
    recipe.write_text(
        json.dumps(
            {
                "model": {"name_or_path": str(model_dir)},
                "data": {"path": str(FINAL_JSONL)},
                "training": {
                    "output_dir": str(out),
                    "strategy": strategy,
                    "progress_bar": False,
                    **SETTINGS,
                },
            }
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "sft",
        "train",
        "--config",
        str(recipe),
        *extra,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows]


@pytest.fixture(scope="module")
def single_losses(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    out = tmp_path_factory.mktemp("single") / "run"
    return train(make_recipe(tiny_model_dir, out, **SETTINGS)).losses


def test_ddp_matches_one_process(
    tiny_model_dir: Path, tmp_path: Path, single_losses: list[float]
) -> None:
    losses = _torchrun(tiny_model_dir, tmp_path / "ddp", "ddp", [])
    assert losses == pytest.approx(single_losses, abs=1e-5)
    assert (tmp_path / "ddp" / "final" / "model.safetensors").is_file()


def test_fsdp_matches_one_process(
    tiny_model_dir: Path, tmp_path: Path, single_losses: list[float]
) -> None:
    out = tmp_path / "fsdp"
    losses = _torchrun(tiny_model_dir, out, "fsdp", [])
    assert losses == pytest.approx(single_losses, abs=1e-5)
    assert (out / "checkpoints" / "step-00000002" / "dcp").is_dir()

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fsdp_resume_matches_one_process(
    tiny_model_dir: Path, tmp_path: Path, single_losses: list[float]
) -> None:
    out = tmp_path / "fsdp"
    _torchrun(tiny_model_dir, out, "fsdp", ["--set", "training.stop_after_steps=3"])
    assert (out / "checkpoints" / "step-00000003" / "dcp").is_dir()
    assert not (out / "final").exists()
    losses = _torchrun(tiny_model_dir, out, "fsdp", [])
    assert losses == pytest.approx(single_losses, abs=1e-5)
    assert (out / "final" / "model.safetensors").is_file()


def test_ddp_sequence_weighting_matches_one_process(
    tiny_model_dir: Path, tmp_path: Path, single_losses: list[float]
) -> None:
    # Each rank holds three of a step's six sequences; the mean is still over all six.
    single = train(
        make_recipe(tiny_model_dir, tmp_path / "single", loss_weighting="sequence", **SETTINGS)
    ).losses
    losses = _torchrun(tiny_model_dir, tmp_path / "ddp", "ddp", ["--loss-weighting", "sequence"])
    assert losses == pytest.approx(single, abs=1e-5)
    assert single != pytest.approx(single_losses, abs=1e-4)
