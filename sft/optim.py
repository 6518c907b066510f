"""Adafactor with a fixed learning rate, and the linear warmup/decay schedule.

The method trains with Adafactor at an external learning rate: no relative step size, no
parameter-scale factor, no first moment, update clipping at RMS 1, second-moment decay
1 - t^-0.8, factored second moments for matrices. This is the configuration `transformers`
builds for `optim="adafactor"`; it is re-implemented here so that its state is built from the
gradients' own tensors and it also runs on FSDP's sharded (DTensor) parameters, where the
`transformers` class mixes plain tensors and DTensors. Math is done in fp32; bf16 parameters are
updated from an fp32 copy and rounded back, as the reference does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR


class Adafactor(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict],
        lr: float = 1e-5,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        decay_rate: float = -0.8,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"learning rate must be positive: {lr}")
        defaults = {
            "lr": lr,
            "eps": eps,
            "clip_threshold": clip_threshold,
            "decay_rate": decay_rate,
            "weight_decay": weight_decay,
        }
        super().__init__(params, defaults)

    @staticmethod
    def _rms(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.norm(2) / math.sqrt(tensor.numel())

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, param.grad, group)
        return loss

    def _update(self, param: torch.nn.Parameter, raw_grad: torch.Tensor, group: dict) -> None:
        grad = raw_grad.float()
        state = self.state[param]
        factored = grad.dim() >= 2
        squared = grad * grad + group["eps"][0]
        if not state:
            state["step"] = 0
            # Zero tensors derived from the gradient keep its device, dtype and sharding.
            if factored:
                state["exp_avg_sq_row"] = torch.zeros_like(squared.mean(dim=-1))
                state["exp_avg_sq_col"] = torch.zeros_like(squared.mean(dim=-2))
            else:
                state["exp_avg_sq"] = torch.zeros_like(squared)
        state["step"] += 1
        beta2 = 1.0 - math.pow(state["step"], group["decay_rate"])
        if factored:
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            row.mul_(beta2).add_(squared.mean(dim=-1), alpha=1.0 - beta2)
            col.mul_(beta2).add_(squared.mean(dim=-2), alpha=1.0 - beta2)
            row_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1)
            update = row_factor * col.unsqueeze(-2).rsqrt() * grad
        else:
            avg = state["exp_avg_sq"]
            avg.mul_(beta2).add_(squared, alpha=1.0 - beta2)
            update = avg.rsqrt() * grad
        update = update / (self._rms(update) / group["clip_threshold"]).clamp(min=1.0)
        lr = group["lr"]
        master = param.float() if param.dtype != torch.float32 else param
        if group["weight_decay"]:
            master.add_(master, alpha=-group["weight_decay"] * lr)
        master.add_(update, alpha=-lr)
        if master is not param:
            param.copy_(master)


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(warmup_ratio * total_steps)


def linear_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> LambdaLR:
    """Linear warmup over ceil(warmup_ratio * total) steps, then linear decay to zero."""
    warmup = warmup_steps(total_steps, warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return LambdaLR(optimizer, factor)
