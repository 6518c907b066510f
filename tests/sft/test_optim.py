"""The Adafactor and schedule used for training match the reference configuration."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers.optimization import Adafactor as ReferenceAdafactor
from transformers.optimization import get_linear_schedule_with_warmup

from sft.optim import Adafactor, linear_schedule, warmup_steps


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Embedding(50, 16),
        torch.nn.Linear(16, 32),
        torch.nn.LayerNorm(32),
        torch.nn.Linear(32, 50),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_transformers_adafactor_without_relative_step(dtype: torch.dtype) -> None:
    ours = _model().to(dtype)
    reference = copy.deepcopy(ours)
    opt_ours = Adafactor(ours.parameters(), lr=1e-2)
    opt_ref = ReferenceAdafactor(
        reference.parameters(),
        lr=1e-2,
        scale_parameter=False,
        relative_step=False,
        warmup_init=False,
    )
    generator = torch.Generator().manual_seed(1)
    for _ in range(15):
        tokens = torch.randint(0, 50, (4, 7), generator=generator)
        for model, optimizer in ((ours, opt_ours), (reference, opt_ref)):
            optimizer.zero_grad()
            model(tokens).float().logsumexp(-1).sum().backward()
            optimizer.step()
    tolerance = 1e-6 if dtype == torch.float32 else 0
    for a, b in zip(ours.parameters(), reference.parameters(), strict=True):
        assert (a.float() - b.float()).abs().max().item() <= tolerance


def test_state_round_trips_through_state_dict() -> None:
    model = _model()
    optimizer = Adafactor(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    optimizer.step()
    clone = Adafactor(model.parameters(), lr=1e-3)
    clone.load_state_dict(optimizer.state_dict())
    for p in model.parameters():
        for key, value in optimizer.state[p].items():
            assert torch.equal(torch.as_tensor(clone.state[p][key]), torch.as_tensor(value))


@pytest.mark.parametrize(("total", "ratio"), [(100, 0.05), (7, 0.05), (10, 0.0), (3, 0.5)])
def test_linear_schedule_matches_transformers(total: int, ratio: float) -> None:
    warmup = warmup_steps(total, ratio)
    assert warmup == math.ceil(total * ratio)
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    ours = linear_schedule(torch.optim.SGD([p1], lr=1e-5), total, ratio)
    reference = get_linear_schedule_with_warmup(torch.optim.SGD([p2], lr=1e-5), warmup, total)
    for _ in range(total):
        assert ours.get_last_lr() == pytest.approx(reference.get_last_lr(), abs=1e-15)
        ours.optimizer.step()
        reference.optimizer.step()
        ours.step()
        reference.step()
