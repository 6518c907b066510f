"""Which examples each optimizer step uses, and how they become tensors.

Every optimizer step consumes exactly `global_batch_size` examples (fewer only in the last step
of an epoch), in an order fixed by the seed and the epoch. The data position of a run is
therefore just its step number, which is what makes resume exact. Each rank takes a strided
share of the step's examples and splits it into micro-batches, either padded (at most
`micro_batch_size` sequences, similar lengths together) or packed without padding into one row
whose position ids restart at every sequence, so attention never crosses a boundary.
The loss is a weighted sum over target tokens divided by the step's normaliser: with token
weighting every target weighs 1 and the normaliser is the step's number of target tokens; with
sequence weighting a target weighs 1 / (targets of its sequence) and the normaliser is the
step's number of sequences. Either way padding, packing, micro-batch size and world size do not
change it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sft.config import LossWeighting
from sft.data import IGNORE_INDEX, Example


@dataclass(frozen=True)
class StepPlan:
    num_examples: int
    global_batch_size: int
    num_epochs: int
    seed: int
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.num_examples < 1:
            raise ValueError("a step plan needs at least one example")

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_examples / self.global_batch_size)

    @property
    def total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return self.steps_per_epoch * self.num_epochs

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def step_indices(self, step: int) -> np.ndarray:
        """Example indices of a global step (runs past num_epochs keep cycling epochs)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        start = position * self.global_batch_size
        return self.epoch_order(epoch)[start : start + self.global_batch_size]


def rank_share(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    return indices[rank::world_size]


@dataclass(frozen=True)
class MicroBatch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    sequence_lengths: tuple[int, ...]

    @property
    def num_tokens(self) -> int:
        return sum(self.sequence_lengths)

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def to(self, device: torch.device) -> MicroBatch:
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device, non_blocking=True)

        return MicroBatch(
            move(self.input_ids),  # type: ignore[arg-type]
            move(self.labels),  # type: ignore[arg-type]
            move(self.attention_mask),
            move(self.position_ids),
            self.sequence_lengths,
        )


def pad_batch(examples: Sequence[Example], pad_id: int) -> MicroBatch:
    """Right-padded rows with an attention mask; pads carry no loss."""
    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example)
        input_ids[row, :n] = torch.from_numpy(example.input_ids.astype(np.int64))
        labels[row, :n] = torch.from_numpy(example.labels)
        attention_mask[row, :n] = 1
    return MicroBatch(input_ids, labels, attention_mask, None, tuple(len(e) for e in examples))


def pack_batch(examples: Sequence[Example]) -> MicroBatch:
    """One row holding all sequences back to back; position ids restart at each sequence."""
    input_ids = torch.from_numpy(np.concatenate([e.input_ids for e in examples]).astype(np.int64))
    labels = torch.from_numpy(np.concatenate([e.labels for e in examples]))
    positions = torch.cat([torch.arange(len(e)) for e in examples])
    return MicroBatch(
        input_ids[None], labels[None], None, positions[None], tuple(len(e) for e in examples)
    )


def empty_batch(pad_id: int) -> MicroBatch:
    """A one-token batch with no targets, for a rank left without examples in a short step."""
    one = torch.full((1, 1), pad_id, dtype=torch.long)
    return MicroBatch(one, torch.full_like(one, IGNORE_INDEX), torch.ones_like(one), None, (1,))


def micro_batches(
    examples: Sequence[Example],
    micro_batch_size: int,
    pad_id: int,
    pack_max_tokens: int | None = None,
) -> list[MicroBatch]:
    """Splits one rank's share of a step into micro-batches (packed when pack_max_tokens)."""
    if not examples:
        return [empty_batch(pad_id)]
    # Longest first: padded batches then hold similar lengths and packing fills rows better.
    ordered = sorted(examples, key=len, reverse=True)
    if pack_max_tokens is None:
        return [
            pad_batch(ordered[i : i + micro_batch_size], pad_id)
            for i in range(0, len(ordered), micro_batch_size)
        ]
    rows: list[list[Example]] = []
    room: list[int] = []
    for example in ordered:
        # First fit: the first row with room, else a new row (a sequence is never split).
        for index, free in enumerate(room):
            if len(example) <= free:
                rows[index].append(example)
                room[index] -= len(example)
                break
        else:
            rows.append([example])
            room.append(pack_max_tokens - len(example))
    return [pack_batch(row) for row in rows]


def count_targets(examples: Sequence[Example]) -> int:
    return sum(e.num_targets for e in examples)


def loss_normalizer(examples: Sequence[Example], weighting: LossWeighting) -> int:
    """What a step's weighted loss sum is divided by (see the module docstring)."""
    return count_targets(examples) if weighting == "token" else len(examples)


def sequence_weights(batch: MicroBatch) -> torch.Tensor:
    """Per label position: 1 / (target tokens of its sequence) on targets, 0 elsewhere."""
    targets = batch.labels != IGNORE_INDEX
    if batch.labels.size(0) == len(batch.sequence_lengths):
        # One sequence per row (padded, or a packed row holding one sequence).
        counts = targets.sum(dim=1, keepdim=True)
        return targets / counts.clamp(min=1)
    # One packed row: sequences back to back.
    device = batch.labels.device
    lengths = torch.tensor(batch.sequence_lengths, device=device)
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
    counts = torch.zeros(len(lengths), device=device).index_add_(0, owner, targets[0].float())
    return (targets[0] / counts[owner].clamp(min=1))[None]
