"""The training loop.

Reads a recipe, builds the examples, and runs optimizer steps of exactly one global batch each:
every rank computes the summed token loss of its share in micro-batches (gradients are synced
on the last one only), the sum is scaled by world size over the step's total target tokens, and
Adafactor steps with the linear schedule. Each step logs loss, learning rate, tokens/s and MFU
to `metrics.jsonl` and the progress bar. Checkpoints allow exact resume; at the end the model is
saved as a Hugging Face folder in `<output_dir>/final` with the training template as its chat
template.
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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sft.batching import MicroBatch, StepPlan, count_targets, micro_batches, rank_share
from sft.checkpoint import (
    TrainState,
    checkpoint_root,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from sft.config import Recipe, dump_recipe
from sft.data import IGNORE_INDEX, build_dataset
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


def token_loss_sum(model: torch.nn.Module, batch: MicroBatch) -> torch.Tensor:
    """Summed next-token cross-entropy over the batch's target tokens."""
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    ).logits
    # Shift the labels rather than the logits: slicing the logits would copy all of them.
    labels = F.pad(batch.labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def run_step(
    model: torch.nn.Module,
    batches: list[MicroBatch],
    step_targets: int,
    env: DistEnv,
    precision: Precision,
) -> torch.Tensor:
    """Forward and backward over one rank's micro-batches; returns its summed loss."""
    # DDP and FSDP average gradients over ranks, hence the world size in the scale.
    scale = env.world_size / step_targets
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
                loss_sum = token_loss_sum(model, batch)
            (loss_sum * scale).backward()
        total += loss_sum.detach().double()
    return total


def _write_run_files(out: Path, recipe: Recipe, dataset: Any) -> None:
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
    cfg = recipe.training
    out = Path(cfg.output_dir)
    seed_everything(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)

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
    pack_tokens = None
    if cfg.packing:
        pack_tokens = cfg.pack_max_tokens or cfg.micro_batch_size * recipe.data.max_length
        if pack_tokens < recipe.data.max_length:
            raise ValueError("training.pack_max_tokens must be at least data.max_length")

    done = _completed_state(out / "final", recipe.fingerprint()) if cfg.resume else None
    if done is not None:
        log.info(
            "%s already holds the model after %d steps; nothing to do", out / "final", done.step
        )
        return TrainResult(out, out / "final", done, plan.total_steps)

    precision = resolve_precision(recipe.model.precision, env.device)
    strategy = resolve_strategy(cfg.strategy, env)
    model = load_model(recipe.model, precision)
    flops = flops_model(model)
    model = wrap_model(model, env, strategy, precision)
    optimizer = Adafactor(model.parameters(), lr=cfg.learning_rate)
    scheduler = linear_schedule(optimizer, plan.total_steps, cfg.warmup_ratio)

    state = TrainState()
    if not cfg.resume and env.is_main:
        _start_over(out)
    barrier(env)
    resume_from = latest_checkpoint(out) if cfg.resume else None
    if resume_from is not None:
        state = load_checkpoint(
            resume_from, model, optimizer, scheduler, env, strategy, recipe.fingerprint()
        )
        log.info("resumed from %s at step %d", resume_from, state.step)
    peak = peak_flops(env.device, precision, cfg.peak_tflops)
    log.info(
        "training: %d examples, %d steps (%d per epoch), global batch %d on %d rank(s), "
        "strategy %s, precision %s, %s, device %s",
        len(dataset.examples),
        plan.total_steps,
        plan.steps_per_epoch,
        cfg.global_batch_size,
        env.world_size,
        strategy,
        precision.name,
        f"packing to {pack_tokens} tokens"
        if pack_tokens
        else f"micro-batch {cfg.micro_batch_size}",
        env.device,
    )

    metrics = None
    if env.is_main:
        _trim_metrics(out / "metrics.jsonl", state.step)
        metrics = open(out / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
    progress = tqdm(
        total=plan.total_steps,
        initial=state.step,
        disable=not (env.is_main and cfg.progress_bar),
        desc="sft",
        dynamic_ncols=True,
    )
    losses: list[float] = []
    stopped_early = False
    model.train()
    try:
        while state.step < plan.total_steps:
            started, cpu_started = time.perf_counter(), time.process_time()
            indices = plan.step_indices(state.step)
            step_examples = [dataset.examples[i] for i in indices]
            step_targets = count_targets(step_examples)
            mine = [dataset.examples[i] for i in rank_share(indices, env.rank, env.world_size)]
            batches = micro_batches(mine, cfg.micro_batch_size, pad_id, pack_tokens)

            loss_sum = run_step(model, batches, step_targets, env, precision)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss = float(all_reduce_sum(loss_sum, env).item()) / step_targets
            elapsed = time.perf_counter() - started
            cpu_seconds = time.process_time() - cpu_started

            lengths = [len(e) for e in step_examples]
            state = TrainState(
                step=state.step + 1,
                tokens=state.tokens + sum(lengths),
                target_tokens=state.target_tokens + step_targets,
                examples=state.examples + len(step_examples),
            )
            losses.append(loss)
            tokens_per_s = sum(lengths) / elapsed
            mfu = None
            if peak is not None:
                mfu = flops.step_flops(lengths) / elapsed / (peak * env.world_size)
            record = {
                "step": state.step,
                "epoch": plan.epoch_of(state.step - 1),
                "loss": loss,
                "lr": lr,
                "tokens": sum(lengths),
                "target_tokens": step_targets,
                "micro_batches": len(batches),
                "step_time_s": elapsed,
                # CPU time of this process (all its threads): on a shared CPU, compare with
                # step_time_s to see how much of the machine the step got.
                "cpu_time_s": cpu_seconds,
                "tokens_per_s": tokens_per_s,
                "mfu": mfu,
            }
            progress.update(1)
            progress.set_postfix(
                loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:.0f}", refresh=False
            )
            if metrics is not None:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                if state.step % cfg.log_every_steps == 0 or state.step == plan.total_steps:
                    log.info(
                        "step %d/%d loss %.4f lr %.3e tokens/s %.0f mfu %s",
                        state.step,
                        plan.total_steps,
                        loss,
                        lr,
                        tokens_per_s,
                        "n/a" if mfu is None else f"{mfu:.3f}",
                    )

            finished = state.step >= plan.total_steps
            stop_now = cfg.stop_after_steps is not None and len(losses) >= cfg.stop_after_steps
            due = cfg.save_every_steps is not None and state.step % cfg.save_every_steps == 0
            if not finished and (due or stop_now):
                path = save_checkpoint(
                    out,
                    state,
                    model,
                    optimizer,
                    scheduler,
                    env,
                    strategy,
                    cfg.keep_checkpoints,
                    recipe.fingerprint(),
                )
                log.info("checkpoint %s", path)
            if stop_now and not finished:
                stopped_early = True
                break
    finally:
        progress.close()
        if metrics is not None:
            metrics.close()

    final_dir = None
    if not stopped_early:
        summary = {
            "state": asdict(state),
            "total_steps": plan.total_steps,
            "fingerprint": recipe.fingerprint(),
            "recipe": recipe.to_dict(),
        }
        final_dir = save_hf_folder(
            out / "final", model, tokenizer, env, strategy, recipe.data.system, summary
        )
        log.info("saved %s", final_dir)
    return TrainResult(out, final_dir, state, plan.total_steps, losses, stopped_early)
