"""The training loop.

Reads a recipe, builds the examples, and runs optimizer steps of exactly one global batch each:
every rank computes the weighted loss sum of its share in micro-batches (gradients are synced
on the last one only), the sum is scaled by world size over the step's normaliser (its target
tokens, or its sequences with `training.loss_weighting: sequence`), and Adafactor steps with
the linear schedule. Each step logs loss, learning rate, tokens/s and MFU to `metrics.jsonl`
and the progress bar. Checkpoints allow exact resume; at the end the model is saved as a
Hugging Face folder in `<output_dir>/final` with the training template as its chat template.

`_train` reads as its steps: set up the process, prepare the data, build the model and
optimizer, restore a checkpoint, run the loop (step, report, checkpoint), save the model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from sft.batching import (
    MicroBatch,
    StepPlan,
    count_targets,
    loss_normalizer,
    micro_batches,
    rank_share,
    sequence_weights,
)
from sft.checkpoint import (
    TrainState,
    checkpoint_root,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from sft.config import LossWeighting, Recipe, TrainingConfig, dump_recipe
from sft.data import IGNORE_INDEX, SFTDataset, build_dataset
from sft.distributed import (
    DistEnv,
    all_reduce_sum,
    barrier,
    gradient_sync,
    init_distributed,
    resolve_strategy,
    shutdown,
    wrap_model,
)
from sft.export import save_hf_folder
from sft.model import (
    FlopsModel,
    Precision,
    flops_model,
    load_model,
    load_tokenizer,
    peak_flops,
    resolve_precision,
)
from sft.optim import Adafactor, linear_schedule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    final_dir: Path | None
    state: TrainState
    total_steps: int
    # Loss of every step run by this process, in order.
    losses: list[float] = field(default_factory=list)
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loss_sum(
    model: torch.nn.Module, batch: MicroBatch, weighting: LossWeighting = "token"
) -> torch.Tensor:
    """Next-token cross-entropy summed over the batch's targets, each weighted per `weighting`.

    token: every target weighs 1. sequence: a target weighs 1 / (targets of its sequence), so
    each sequence adds its token mean.
    """
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    ).logits
    # Shift the labels rather than the logits: slicing the logits would copy all of them.
    labels = F.pad(batch.labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    flat_logits = logits.float().reshape(-1, logits.size(-1))
    if weighting == "token":
        return F.cross_entropy(
            flat_logits, labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
    losses = F.cross_entropy(
        flat_logits, labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    weights = F.pad(sequence_weights(batch)[:, 1:], (0, 1), value=0.0)
    return (losses * weights.reshape(-1)).sum()


def run_step(
    model: torch.nn.Module,
    batches: list[MicroBatch],
    normalizer: int,
    env: DistEnv,
    precision: Precision,
    weighting: LossWeighting = "token",
) -> torch.Tensor:
    """Forward and backward over one rank's micro-batches; returns its weighted loss sum.

    `normalizer` is the whole step's (all ranks) target-token count under token weighting, its
    number of sequences under sequence weighting.
    """
    # DDP and FSDP average gradients over ranks, hence the world size in the scale.
    scale = env.world_size / normalizer
    total = torch.zeros((), dtype=torch.float64, device=env.device)
    for index, batch in enumerate(batches):
        batch = batch.to(env.device)
        autocast = (
            torch.autocast(env.device.type, dtype=torch.bfloat16)
            if precision.autocast
            else contextlib.nullcontext()
        )
        with gradient_sync(model, sync=index == len(batches) - 1):
            with autocast:
                batch_loss = loss_sum(model, batch, weighting)
            (batch_loss * scale).backward()
        total += batch_loss.detach().double()
    return total


def _write_run_files(out: Path, recipe: Recipe, dataset: SFTDataset) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(dump_recipe(recipe))
    (out / "data_stats.json").write_text(json.dumps(dataset.stats.to_dict(), indent=2))
    with open(out / "rejected_records.jsonl", "w", encoding="utf-8") as handle:
        for item in dataset.rejected:
            handle.write(item.to_json() + "\n")


def _completed_state(final_dir: Path, fingerprint: str) -> TrainState | None:
    """The state of a finished run of this recipe whose model folder was fully written."""
    summary = final_dir / "sft_training.json"
    if not summary.is_file():
        return None
    saved = json.loads(summary.read_text())
    if saved.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{final_dir} holds a model trained with a different recipe; use another "
            "training.output_dir"
        )
    return TrainState(**saved["state"])


def _start_over(out: Path) -> None:
    """Removes an earlier run's checkpoints, model and metrics (training.resume=false)."""
    for path in (checkpoint_root(out), out / "final"):
        if path.exists():
            log.warning("resume is off: removing %s", path)
            shutil.rmtree(path)
    (out / "metrics.jsonl").unlink(missing_ok=True)


def _trim_metrics(path: Path, step: int) -> None:
    """Drops logged steps after the checkpoint being resumed (they are run again)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def train(recipe: Recipe) -> TrainResult:
    """Runs (or resumes) the training job of a recipe; call under torchrun for several ranks."""
    env = init_distributed()
    try:
        return _train(recipe, env)
    finally:
        shutdown(env)


def _train(recipe: Recipe, env: DistEnv) -> TrainResult:
    out = Path(recipe.training.output_dir)
    _setup_process(recipe.training)
    data = _prepare_data(recipe, env, out)
    done = _completed_state(out / "final", recipe.fingerprint()) if recipe.training.resume else None
    if done is not None:
        log.info(
            "%s already holds the model after %d steps; nothing to do", out / "final", done.step
        )
        return TrainResult(out, out / "final", done, data.plan.total_steps)
    parts = _build_trainable(recipe, env, data.plan)
    state = _restore_state(recipe, env, out, parts)
    _log_start(recipe, env, data, parts)
    loop = _run_loop(recipe, env, out, data, parts, state)
    final_dir = None
    if not loop.stopped_early:
        final_dir = _save_final(recipe, env, out, data, parts, loop.state)
    return TrainResult(
        out, final_dir, loop.state, data.plan.total_steps, loop.losses, loop.stopped_early
    )


# ----------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class _Data:
    """The examples, the step plan and how steps become micro-batches."""

    tokenizer: Any
    dataset: SFTDataset
    plan: StepPlan
    pad_id: int
    # Tokens per packed row, or None for padded micro-batches.
    pack_tokens: int | None


@dataclass(frozen=True)
class _Trainable:
    """The (wrapped) model with its optimizer, schedule and the figures for MFU."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    precision: Precision
    strategy: str
    flops: FlopsModel
    peak_flops: float | None


def _setup_process(cfg: TrainingConfig) -> None:
    seed_everything(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)


def _pack_tokens(cfg: TrainingConfig, max_length: int) -> int | None:
    if not cfg.packing:
        return None
    tokens = cfg.pack_max_tokens or cfg.micro_batch_size * max_length
    if tokens < max_length:
        raise ValueError("training.pack_max_tokens must be at least data.max_length")
    return tokens


def _prepare_data(recipe: Recipe, env: DistEnv, out: Path) -> _Data:
    """Tokenizer and examples; the main rank writes the recipe, data stats and rejections."""
    cfg = recipe.training
    tokenizer = load_tokenizer(recipe.model)
    dataset = build_dataset(recipe.data, tokenizer)
    if env.is_main:
        _write_run_files(out, recipe, dataset)
    plan = StepPlan(
        len(dataset.examples), cfg.global_batch_size, cfg.num_epochs, cfg.seed, cfg.max_steps
    )
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    pack_tokens = _pack_tokens(cfg, recipe.data.max_length)
    return _Data(tokenizer, dataset, plan, pad_id, pack_tokens)


def _build_trainable(recipe: Recipe, env: DistEnv, plan: StepPlan) -> _Trainable:
    cfg = recipe.training
    precision = resolve_precision(recipe.model.precision, env.device)
    strategy = resolve_strategy(cfg.strategy, env)
    model = load_model(recipe.model, precision)
    flops = flops_model(model)
    model = wrap_model(model, env, strategy, precision)
    optimizer = Adafactor(model.parameters(), lr=cfg.learning_rate)
    scheduler = linear_schedule(optimizer, plan.total_steps, cfg.warmup_ratio)
    peak = peak_flops(env.device, precision, cfg.peak_tflops)
    return _Trainable(model, optimizer, scheduler, precision, strategy, flops, peak)


def _restore_state(recipe: Recipe, env: DistEnv, out: Path, parts: _Trainable) -> TrainState:
    """Resumes from the newest checkpoint, or clears an earlier run when resume is off."""
    if not recipe.training.resume and env.is_main:
        _start_over(out)
    barrier(env)
    resume_from = latest_checkpoint(out) if recipe.training.resume else None
    if resume_from is None:
        return TrainState()
    state = load_checkpoint(
        resume_from,
        parts.model,
        parts.optimizer,
        parts.scheduler,
        env,
        parts.strategy,
        recipe.fingerprint(),
    )
    log.info("resumed from %s at step %d", resume_from, state.step)
    return state


def _log_start(recipe: Recipe, env: DistEnv, data: _Data, parts: _Trainable) -> None:
    cfg = recipe.training
    log.info(
        "training: %d examples, %d steps (%d per epoch), global batch %d on %d rank(s), "
        "strategy %s, precision %s, %s, %s loss weighting, device %s",
        len(data.dataset.examples),
        data.plan.total_steps,
        data.plan.steps_per_epoch,
        cfg.global_batch_size,
        env.world_size,
        parts.strategy,
        parts.precision.name,
        f"packing to {data.pack_tokens} tokens"
        if data.pack_tokens
        else f"micro-batch {cfg.micro_batch_size}",
        cfg.loss_weighting,
        env.device,
    )


# ----------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class _LoopResult:
    state: TrainState
    # Loss of every step run by this process, in order.
    losses: list[float]
    stopped_early: bool


def _run_loop(
    recipe: Recipe, env: DistEnv, out: Path, data: _Data, parts: _Trainable, state: TrainState
) -> _LoopResult:
    """Optimizer steps until the plan is done or stop_after_steps is reached."""
    cfg = recipe.training
    total = data.plan.total_steps
    losses: list[float] = []
    metrics = None
    if env.is_main:
        _trim_metrics(out / "metrics.jsonl", state.step)
        metrics = open(out / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
    progress = tqdm(
        total=total,
        initial=state.step,
        disable=not (env.is_main and cfg.progress_bar),
        desc="sft",
        dynamic_ncols=True,
    )
    parts.model.train()
    try:
        while state.step < total:
            state, record = _train_step(recipe, env, data, parts, state)
            losses.append(record["loss"])
            _report_step(record, total, cfg.log_every_steps, progress, metrics)
            finished = state.step >= total
            stop_now = cfg.stop_after_steps is not None and len(losses) >= cfg.stop_after_steps
            due = cfg.save_every_steps is not None and state.step % cfg.save_every_steps == 0
            if not finished and (due or stop_now):
                _checkpoint(recipe, env, out, parts, state)
            if stop_now and not finished:
                return _LoopResult(state, losses, stopped_early=True)
    finally:
        progress.close()
        if metrics is not None:
            metrics.close()
    return _LoopResult(state, losses, stopped_early=False)


def _train_step(
    recipe: Recipe, env: DistEnv, data: _Data, parts: _Trainable, state: TrainState
) -> tuple[TrainState, dict[str, Any]]:
    """One optimizer step over one global batch; the new state and the step's metrics row."""
    cfg = recipe.training
    started, cpu_started = time.perf_counter(), time.process_time()
    examples = data.dataset.examples
    indices = data.plan.step_indices(state.step)
    step_examples = [examples[i] for i in indices]
    step_targets = count_targets(step_examples)
    normalizer = loss_normalizer(step_examples, cfg.loss_weighting)
    mine = [examples[i] for i in rank_share(indices, env.rank, env.world_size)]
    batches = micro_batches(mine, cfg.micro_batch_size, data.pad_id, data.pack_tokens)

    weighted = run_step(parts.model, batches, normalizer, env, parts.precision, cfg.loss_weighting)
    lr = parts.optimizer.param_groups[0]["lr"]
    parts.optimizer.step()
    parts.scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)
    loss = float(all_reduce_sum(weighted, env).item()) / normalizer
    elapsed = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started

    lengths = [len(e) for e in step_examples]
    state = TrainState(
        step=state.step + 1,
        tokens=state.tokens + sum(lengths),
        target_tokens=state.target_tokens + step_targets,
        examples=state.examples + len(step_examples),
    )
    mfu = None
    if parts.peak_flops is not None:
        mfu = parts.flops.step_flops(lengths) / elapsed / (parts.peak_flops * env.world_size)
    record = {
        "step": state.step,
        "epoch": data.plan.epoch_of(state.step - 1),
        "loss": loss,
        "lr": lr,
        "tokens": sum(lengths),
        "target_tokens": step_targets,
        "micro_batches": len(batches),
        "step_time_s": elapsed,
        # CPU time of this process (all its threads): on a shared CPU, compare with
        # step_time_s to see how much of the machine the step got.
        "cpu_time_s": cpu_seconds,
        "tokens_per_s": sum(lengths) / elapsed,
        "mfu": mfu,
    }
    return state, record


def _report_step(
    record: dict[str, Any],
    total_steps: int,
    log_every_steps: int,
    progress: tqdm,
    metrics: IO[str] | None,
) -> None:
    """Progress bar on every rank that shows one; metrics.jsonl and the log on the main rank."""
    progress.update(1)
    progress.set_postfix(
        loss=f"{record['loss']:.4f}",
        lr=f"{record['lr']:.2e}",
        tok_s=f"{record['tokens_per_s']:.0f}",
        refresh=False,
    )
    if metrics is None:
        return
    metrics.write(json.dumps(record) + "\n")
    metrics.flush()
    step = record["step"]
    if step % log_every_steps == 0 or step == total_steps:
        log.info(
            "step %d/%d loss %.4f lr %.3e tokens/s %.0f mfu %s",
            step,
            total_steps,
            record["loss"],
            record["lr"],
            record["tokens_per_s"],
            "n/a" if record["mfu"] is None else f"{record['mfu']:.3f}",
        )


# ----------------------------------------------------------------------------- saving


def _checkpoint(
    recipe: Recipe, env: DistEnv, out: Path, parts: _Trainable, state: TrainState
) -> None:
    path = save_checkpoint(
        out,
        state,
        parts.model,
        parts.optimizer,
        parts.scheduler,
        env,
        parts.strategy,
        recipe.training.keep_checkpoints,
        recipe.fingerprint(),
    )
    log.info("checkpoint %s", path)


def _save_final(
    recipe: Recipe, env: DistEnv, out: Path, data: _Data, parts: _Trainable, state: TrainState
) -> Path:
    """The model as a Hugging Face folder, with a summary that marks the run finished."""
    summary = {
        "state": asdict(state),
        "total_steps": data.plan.total_steps,
        "fingerprint": recipe.fingerprint(),
        "recipe": recipe.to_dict(),
    }
    final_dir = save_hf_folder(
        out / "final",
        parts.model,
        data.tokenizer,
        env,
        parts.strategy,
        recipe.data.system,
        summary,
    )
    log.info("saved %s", final_dir)
    return final_dir
