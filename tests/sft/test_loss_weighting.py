"""Loss weighting: token mean (default) and the mean of per-sequence token means (reference)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from sft.batching import StepPlan, loss_normalizer, micro_batches, sequence_weights
from sft.config import LossWeighting, dump_recipe, load_recipe
from sft.data import Example, build_dataset
from sft.distributed import DistEnv
from sft.model import Precision, load_model, load_tokenizer, resolve_precision
from sft.tiny import build_model, build_tokenizer
from sft.train import run_step, train

from .conftest import make_recipe

pytestmark = pytest.mark.timeout(300)  # tiny models

CPU = DistEnv(0, 1, 0, torch.device("cpu"))
FP32 = Precision(torch.float32, False)


def _target_losses(model: torch.nn.Module, example: Example) -> torch.Tensor:
    """Cross-entropy of each target token, from the model run on this sequence alone."""
    ids = torch.from_numpy(example.input_ids.astype(np.int64))[None]
    log_probs = model(input_ids=ids).logits[0].float().log_softmax(-1)
    positions = torch.arange(example.prompt_length, len(example))
    return -log_probs[positions - 1, ids[0, positions]]


def _expected(
    model: torch.nn.Module, examples: Sequence[Example], weighting: LossWeighting
) -> torch.Tensor:
    per_sequence = [_target_losses(model, e) for e in examples]
    if weighting == "token":
        return torch.cat(per_sequence).sum() / sum(len(t) for t in per_sequence)
    return torch.stack([t.mean() for t in per_sequence]).mean()


@pytest.fixture(scope="module")
def hand_made() -> tuple[torch.nn.Module, list[Example], int]:
    tokenizer = build_tokenizer("byte-bpe")
    # Larger initial weights make per-token losses spread, so the two weightings differ.
    model = build_model(tokenizer, initializer_range=0.2)
    rng = np.random.default_rng(7)
    ids = rng.integers(3, len(tokenizer), size=60).astype(np.int32)
    # 40 tokens with 34 targets, and 9 tokens with 4 targets.
    long = Example("long", ids[:40], prompt_length=6, truncated=False)
    short = Example("short", ids[40:49], prompt_length=5, truncated=False)
    return model, [long, short], tokenizer.pad_token_id


def test_the_two_weightings_give_their_hand_computed_values(
    hand_made: tuple[torch.nn.Module, list[Example], int],
) -> None:
    model, examples, pad = hand_made
    long, short = examples
    assert (long.num_targets, short.num_targets) == (34, 4)
    assert loss_normalizer(examples, "token") == 38
    assert loss_normalizer(examples, "sequence") == 2
    with torch.no_grad():
        expected = {w: _expected(model, examples, w).item() for w in ("token", "sequence")}
    # One long and one short sequence: weighting them equally is not weighting tokens equally.
    assert abs(expected["token"] - expected["sequence"]) > 1e-2, expected

    for weighting in ("token", "sequence"):
        # Padded one or two per micro-batch, and packed into one row: the same value.
        for micro, pack in ((1, None), (2, None), (2, 4096)):
            model.zero_grad(set_to_none=True)
            batches = micro_batches(examples, micro, pad, pack)
            normalizer = loss_normalizer(examples, weighting)
            total = run_step(model, batches, normalizer, CPU, FP32, weighting)
            got = total.item() / normalizer
            assert got == pytest.approx(expected[weighting], abs=1e-5), (weighting, micro, pack)


@pytest.mark.parametrize("weighting", ["token", "sequence"])
def test_gradients_are_those_of_the_chosen_mean(
    hand_made: tuple[torch.nn.Module, list[Example], int], weighting: LossWeighting
) -> None:
    model, examples, pad = hand_made
    model.zero_grad(set_to_none=True)
    _expected(model, examples, weighting).backward()
    wanted = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    batches = micro_batches(examples, 1, pad)
    run_step(model, batches, loss_normalizer(examples, weighting), CPU, FP32, weighting)
    for a, b in zip(wanted, (p.grad for p in model.parameters()), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_sequence_weights_sum_to_one_per_sequence(
    hand_made: tuple[torch.nn.Module, list[Example], int],
) -> None:
    _, examples, pad = hand_made
    (padded,) = micro_batches(examples, 2, pad)
    (packed,) = micro_batches(examples, 2, pad, 4096)
    assert sequence_weights(padded).sum(dim=1).tolist() == pytest.approx([1.0, 1.0])
    weights = sequence_weights(packed)[0]
    assert weights[:40].sum().item() == pytest.approx(1.0)
    assert weights[40:].sum().item() == pytest.approx(1.0)
    assert (weights[:6] == 0).all() and torch.allclose(weights[6:40], torch.tensor(1 / 34))
    assert torch.allclose(weights[45:], torch.tensor(1 / 4))


def test_the_weighting_reaches_the_training_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sft.cli import main

    settings = {"max_steps": 1, "global_batch_size": 4, "micro_batch_size": 2}
    token = train(make_recipe(tiny_model_dir, tmp_path / "token", **settings))

    # The sequence run comes from the command-line flag.
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(dump_recipe(make_recipe(tiny_model_dir, tmp_path / "seq", **settings)))
    with pytest.raises(SystemExit) as done:
        main(["train", "--config", str(recipe_path), "--loss-weighting", "sequence"])
    assert done.value.code == 0
    saved = load_recipe(tmp_path / "seq" / "recipe.yaml")
    assert saved.training.loss_weighting == "sequence"
    sequence_loss = (tmp_path / "seq" / "metrics.jsonl").read_text().splitlines()[0]

    # The first step's loss is computed with the initial weights on the step's examples.
    recipe = make_recipe(tiny_model_dir, tmp_path / "unused", **settings)
    dataset = build_dataset(recipe.data, load_tokenizer(recipe.model))
    plan = StepPlan(len(dataset.examples), 4, recipe.training.num_epochs, recipe.training.seed)
    step = [dataset.examples[i] for i in plan.step_indices(0)]
    model = load_model(recipe.model, resolve_precision("auto", torch.device("cpu")))
    with torch.no_grad():
        expected_token = _expected(model, step, "token").item()
        expected_sequence = _expected(model, step, "sequence").item()
    assert abs(expected_token - expected_sequence) > 1e-4
    assert token.losses[0] == pytest.approx(expected_token, abs=1e-5)
    assert json.loads(sequence_loss)["loss"] == pytest.approx(expected_sequence, abs=1e-5)


def test_an_unknown_weighting_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loss_weighting"):
        make_recipe(tiny_model_dir, tmp_path, loss_weighting="example")
