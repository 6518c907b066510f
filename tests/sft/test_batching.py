"""Step plans, rank shares, padded and packed micro-batches."""

from __future__ import annotations

import numpy as np
import pytest

from sft.batching import (
    StepPlan,
    count_targets,
    empty_batch,
    micro_batches,
    pack_batch,
    rank_share,
)
from sft.data import IGNORE_INDEX, Example


def _example(i: int, length: int, prompt: int) -> Example:
    ids = np.arange(100 * i, 100 * i + length, dtype=np.int32)
    return Example(f"e{i}", ids, prompt, False)


EXAMPLES = [_example(i, 5 + (7 * i) % 13, 2 + i % 3) for i in range(23)]


@pytest.mark.parametrize(("n", "batch"), [(23, 4), (23, 23), (5, 64), (64, 64)])
def test_each_epoch_visits_every_example_once(n: int, batch: int) -> None:
    plan = StepPlan(n, batch, num_epochs=3, seed=7)
    for epoch in range(3):
        steps = range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch)
        seen = np.concatenate([plan.step_indices(s) for s in steps])
        assert sorted(seen.tolist()) == list(range(n))
    assert plan.total_steps == 3 * -(-n // batch)


def test_orders_depend_on_seed_and_epoch_only() -> None:
    plan = StepPlan(23, 4, 2, seed=7)
    assert np.array_equal(plan.step_indices(3), StepPlan(23, 4, 2, seed=7).step_indices(3))
    assert not np.array_equal(plan.epoch_order(0), plan.epoch_order(1))
    assert not np.array_equal(plan.epoch_order(0), StepPlan(23, 4, 2, seed=8).epoch_order(0))


def test_max_steps_overrides_epochs_and_keeps_cycling() -> None:
    plan = StepPlan(5, 2, 1, seed=0, max_steps=7)
    assert plan.total_steps == 7
    assert plan.epoch_of(6) == 2 and len(plan.step_indices(6)) == 2


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_rank_shares_partition_a_step(world: int) -> None:
    indices = np.arange(11)
    shares = [rank_share(indices, r, world) for r in range(world)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(11))


def test_padded_micro_batches() -> None:
    batches = micro_batches(EXAMPLES[:7], micro_batch_size=3, pad_id=0)
    assert [b.input_ids.shape[0] for b in batches] == [3, 3, 1]
    assert sum(b.num_targets for b in batches) == count_targets(EXAMPLES[:7])
    for batch in batches:
        assert batch.position_ids is None
        pads = batch.attention_mask == 0
        assert (batch.labels[pads] == IGNORE_INDEX).all()
        assert (batch.input_ids[pads] == 0).all()
        assert batch.attention_mask.sum().item() == batch.num_tokens


def test_packed_micro_batches_restart_positions_and_respect_the_budget() -> None:
    budget = 40
    batches = micro_batches(EXAMPLES, micro_batch_size=4, pad_id=0, pack_max_tokens=budget)
    packed_ids = []
    for batch in batches:
        assert batch.input_ids.shape[0] == 1 and batch.attention_mask is None
        assert batch.num_tokens == batch.input_ids.shape[1] <= budget
        positions = batch.position_ids[0].tolist()
        starts = [i for i, p in enumerate(positions) if p == 0]
        assert len(starts) == len(batch.sequence_lengths)
        # The first token of every sequence carries no loss, so no target crosses a boundary.
        assert all(batch.labels[0, s].item() == IGNORE_INDEX for s in starts)
        packed_ids.extend(batch.input_ids[0].tolist())
    original = np.concatenate([e.input_ids for e in EXAMPLES]).tolist()
    assert sorted(packed_ids) == sorted(original)
    assert sum(b.num_targets for b in batches) == count_targets(EXAMPLES)


def test_pack_batch_keeps_each_sequence_contiguous() -> None:
    batch = pack_batch(EXAMPLES[:3])
    offset = 0
    for example in EXAMPLES[:3]:
        n = len(example)
        assert batch.input_ids[0, offset : offset + n].tolist() == example.input_ids.tolist()
        assert batch.position_ids[0, offset : offset + n].tolist() == list(range(n))
        assert batch.labels[0, offset : offset + n].tolist() == example.labels.tolist()
        offset += n


def test_a_rank_without_examples_gets_a_batch_with_no_targets() -> None:
    (batch,) = micro_batches([], micro_batch_size=4, pad_id=3)
    assert batch.num_targets == 0 and batch.input_ids.tolist() == [[3]]
    assert empty_batch(3).num_targets == 0
