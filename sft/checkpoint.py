"""Checkpoints for exact resume: model, optimizer, scheduler, RNG streams and data position.

Layout: `<output_dir>/checkpoints/step-00000012/` holding `trainer.pt` (model and optimizer;
one file written by rank 0) or `dcp/` (PyTorch distributed checkpoint, every rank writes its
shards: FSDP), `scheduler.pt`, `rng-rank<r>.pt` per rank and `meta.json`. A checkpoint is
written into a `.tmp` folder and renamed when complete, so a crash mid-save never leaves a
checkpoint that looks valid. The data position is the optimizer step (see batching.StepPlan).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sft.distributed import DistEnv, barrier, broadcast_object, unwrap

_PREFIX = "step-"


@dataclass(frozen=True)
class TrainState:
    """Counters that continue across resumes."""

    step: int = 0
    tokens: int = 0
    target_tokens: int = 0
    examples: int = 0


def _format(strategy: str) -> str:
    # FSDP writes sharded distributed checkpoints; single-process and DDP whole-model files.
    return "dcp" if strategy == "fsdp" else "torch"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return None
    complete = sorted(
        p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / "meta.json").is_file()
    )
    return complete[-1] if complete else None


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output_dir: str | Path,
    state: TrainState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    env: DistEnv,
    strategy: str,
    keep: int,
    fingerprint: str = "",
) -> Path:
    root = checkpoint_root(output_dir)
    final = root / f"{_PREFIX}{state.step:08d}"
    tmp = root / f"{final.name}.tmp"
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(env)
    if strategy == "fsdp":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / "dcp")
    elif env.is_main:
        torch.save(
            {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict()},
            tmp / "trainer.pt",
        )
    torch.save(rng_state(), tmp / f"rng-rank{env.rank}.pt")
    if env.is_main:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    barrier(env)
    if env.is_main:
        meta = {
            "state": asdict(state),
            "world_size": env.world_size,
            "strategy": strategy,
            "format": _format(strategy),
            "fingerprint": fingerprint,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        _prune(root, keep)
    barrier(env)
    return final


def _prune(root: Path, keep: int) -> None:
    complete = sorted(p for p in root.iterdir() if p.name.startswith(_PREFIX) and p.is_dir())
    complete = [p for p in complete if (p / "meta.json").is_file()]
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    env: DistEnv,
    strategy: str,
    fingerprint: str = "",
) -> TrainState:
    meta = broadcast_object(json.loads((path / "meta.json").read_text()), env)
    if meta.get("fingerprint", "") != fingerprint:
        raise ValueError(
            f"{path} belongs to a run with a different recipe; use another training.output_dir "
            "or set training.resume=false to start over"
        )
    if meta["format"] != _format(strategy):
        raise ValueError(
            f"checkpoint {path} was written with {meta['strategy']} and cannot be resumed "
            f"with {strategy} (sharded and whole-model checkpoints differ)"
        )
    if strategy == "fsdp":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optim_state = get_state_dict(model, optimizer)
        target = {"model": model_state, "optimizer": optim_state}
        dcp.load(target, checkpoint_id=path / "dcp")
        set_state_dict(
            model,
            optimizer,
            model_state_dict=target["model"],
            optim_state_dict=target["optimizer"],
        )
    else:
        saved = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
        unwrap(model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng_file = path / f"rng-rank{env.rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return TrainState(**meta["state"])
