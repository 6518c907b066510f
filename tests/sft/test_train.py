"""The training loop: it learns, resumes exactly, and packing or batching does not change it."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sft.batching import micro_batches
from sft.config import DataConfig
from sft.data import build_dataset
from sft.distributed import DistEnv
from sft.model import Precision
from sft.template import build_prompt
from sft.tiny import build_model, build_tokenizer
from sft.train import loss_sum, run_step, train

from .conftest import FINAL_JSONL, make_recipe

pytestmark = pytest.mark.timeout(600)  # training runs


def test_a_tiny_model_overfits_a_fixed_batch(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Four examples and a global batch of four: every step sees the same batch.
    recipe = make_recipe(
        tiny_model_dir,
        tmp_path / "run",
        data={"limit": 4},
        global_batch_size=4,
        micro_batch_size=2,
        max_steps=80,
        learning_rate=1e-2,
        warmup_ratio=0.0,
    )
    result = train(recipe)
    assert len(result.losses) == 80
    assert result.losses[-1] <= 0.2 * result.losses[0], result.losses[::10]


def _final_params(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_resume_gives_the_same_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = {
        "max_steps": 6,
        "learning_rate": 3e-3,
        "global_batch_size": 6,
        "micro_batch_size": 4,
    }
    straight = train(make_recipe(tiny_model_dir, tmp_path / "straight", **settings))

    first = train(make_recipe(tiny_model_dir, tmp_path / "resumed", stop_after_steps=3, **settings))
    assert first.stopped_early and first.final_dir is None and first.state.step == 3
    assert (tmp_path / "resumed" / "checkpoints" / "step-00000003" / "meta.json").is_file()
    second = train(make_recipe(tiny_model_dir, tmp_path / "resumed", **settings))
    assert second.state.step == 6 and len(second.losses) == 3

    resumed_losses = first.losses + second.losses
    assert resumed_losses == pytest.approx(straight.losses, abs=1e-6)
    assert second.state == straight.state
    a, b = _final_params(straight.final_dir), _final_params(second.final_dir)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name


def test_micro_batch_size_does_not_change_the_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    runs = [
        train(
            make_recipe(
                tiny_model_dir,
                tmp_path / f"m{m}",
                max_steps=3,
                micro_batch_size=m,
                global_batch_size=8,
                learning_rate=1e-3,
            )
        )
        for m in (1, 8)
    ]
    assert runs[0].losses == pytest.approx(runs[1].losses, abs=1e-5)


def _step_loss_and_grads(
    model: torch.nn.Module, examples: list, pack: int | None, pad_id: int
) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    batches = micro_batches(examples, 2, pad_id, pack)
    targets = sum(e.num_targets for e in examples)
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    loss = run_step(model, batches, targets, env, Precision(torch.float32, False)).item() / targets
    return loss, [p.grad.clone() for p in model.parameters()]


def test_packing_gives_the_same_loss_and_gradients() -> None:
    tokenizer = build_tokenizer("byte-bpe")
    examples = list(build_dataset(DataConfig(path=str(FINAL_JSONL), limit=6), tokenizer).examples)
    # Larger initial weights give sharp attention, so leaking across sequences would show.
    model = build_model(tokenizer, initializer_range=0.2)
    pad = tokenizer.pad_token_id
    padded_loss, padded_grads = _step_loss_and_grads(model, examples, None, pad)
    packed_loss, packed_grads = _step_loss_and_grads(model, examples, 4096, pad)
    assert packed_loss == pytest.approx(padded_loss, abs=1e-5)
    for a, b in zip(padded_grads, packed_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)

    # The same row without restarting positions attends across sequences: a different loss.
    (row,) = micro_batches(examples, 2, pad, 4096)
    with torch.no_grad():
        leaky = loss_sum(model, replace(row, position_ids=None)).item()
    assert abs(leaky / sum(e.num_targets for e in examples) - padded_loss) > 1e-2


def test_packed_training_run_matches_padded(tiny_model_dir: Path, tmp_path: Path) -> None:
    common = {"max_steps": 3, "global_batch_size": 8, "micro_batch_size": 2, "learning_rate": 1e-3}
    padded = train(make_recipe(tiny_model_dir, tmp_path / "padded", **common))
    packed = train(make_recipe(tiny_model_dir, tmp_path / "packed", packing=True, **common))
    assert packed.losses == pytest.approx(padded.losses, abs=1e-5)


def test_run_outputs_logs_and_the_saved_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(FINAL_JSONL.read_text() + "{broken\n" + '{"instruction": "x"}\n')
    out = tmp_path / "run"
    recipe = make_recipe(
        tiny_model_dir, out, data={"path": str(data)}, max_steps=2, peak_tflops=1.0
    )
    result = train(recipe)

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    for row in metrics:
        assert row["loss"] > 0 and row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1
        assert {"lr", "tokens", "target_tokens", "epoch", "step_time_s", "cpu_time_s"} <= row.keys()
    assert metrics[0]["lr"] == 0.0  # the first warmup step, as in the reference schedule

    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["rejected"] == {"invalid_json": 1, "missing_field": 1}
    rejected = (out / "rejected_records.jsonl").read_text().splitlines()
    assert len(rejected) == 2
    assert (out / "recipe.yaml").is_file()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = result.final_dir
    assert final == out / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.use_cache is True
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Sort a list."}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == tokenizer.bos_token + build_prompt("Sort a list.")
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    summary = json.loads((final / "sft_training.json").read_text())
    assert summary["state"]["step"] == 2


def test_a_finished_run_is_not_trained_again(tiny_model_dir: Path, tmp_path: Path) -> None:
    recipe = make_recipe(tiny_model_dir, tmp_path / "run", max_steps=2, save_every_steps=1)
    first = train(recipe)
    again = train(recipe)
    assert again.losses == [] and again.state == first.state
    assert again.final_dir == first.final_dir


def test_resuming_with_a_different_recipe_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(make_recipe(tiny_model_dir, out, max_steps=4, stop_after_steps=2))
    with pytest.raises(ValueError, match="different recipe"):
        train(make_recipe(tiny_model_dir, out, max_steps=4, learning_rate=2e-5))
    # Pacing settings may change: the run resumes and finishes.
    done = train(make_recipe(tiny_model_dir, out, max_steps=4, save_every_steps=3))
    assert done.state.step == 4 and len(done.losses) == 2
    with pytest.raises(ValueError, match="different recipe"):
        train(make_recipe(tiny_model_dir, out, max_steps=5))
    fresh = train(make_recipe(tiny_model_dir, out, max_steps=5, resume=False))
    assert fresh.state.step == 5 and len(fresh.losses) == 5
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_steps_logged_after_the_last_checkpoint_are_not_duplicated(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    # A crash after step 3 with the last checkpoint at step 2 looks like this on disk.
    train(make_recipe(tiny_model_dir, out, max_steps=4, save_every_steps=2, stop_after_steps=3))
    checkpoints = out / "checkpoints"
    for path in checkpoints.iterdir():
        if path.name.endswith("03"):
            shutil.rmtree(path)
    train(make_recipe(tiny_model_dir, out, max_steps=4, save_every_steps=2))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
