"""Process group set-up under torchrun, and wrapping the model for DDP or FSDP.

Without torchrun (no WORLD_SIZE in the environment) training runs in one process. Under
torchrun, NCCL is used on GPUs and gloo on CPU. FSDP is PyTorch's `fully_shard` applied to each
decoder layer and then to the whole model; DDP replicates the model.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from sft.model import Precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistEnv:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, device)


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def resolve_strategy(strategy: str, env: DistEnv) -> str:
    if strategy == "auto":
        return "ddp" if env.distributed else "single"
    if strategy in ("ddp", "fsdp") and not env.distributed:
        log.info("strategy %s with one process: training without wrapping", strategy)
        return "single"
    if strategy == "single" and env.distributed:
        raise ValueError("strategy 'single' cannot run under torchrun with more than one process")
    return strategy


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"cannot find decoder layers to shard in {type(model).__name__}")
    return layers


def wrap_model(
    model: torch.nn.Module, env: DistEnv, strategy: str, precision: Precision
) -> torch.nn.Module:
    """Moves the model to the device and wraps it for the strategy."""
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy()
        if precision.autocast:
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        model.to(env.device)
        for layer in _decoder_layers(model):
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    model.to(env.device)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [env.local_rank] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Skips the gradient all-reduce/reduce-scatter on all but the last micro-batch."""
    # getattr, not hasattr + attribute: nn.Module types unknown attributes as Tensor | Module.
    no_sync = getattr(model, "no_sync", None)  # DDP
    if no_sync is not None and not sync:
        with no_sync():
            yield
        return
    set_sync = getattr(model, "set_requires_gradient_sync", None)  # FSDP2
    if set_sync is not None:
        set_sync(sync)
    yield


def all_reduce_sum(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_object(value: Any, env: DistEnv) -> Any:
    if not env.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
