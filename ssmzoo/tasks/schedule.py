"""Learning-rate schedules (the S4 recipe: linear warmup, then cosine decay to zero, per step; or warmup then a
constant rate) and the AdamW set-up the tasks share."""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
from torch import nn

from ..optim import param_groups


def warmup_steps_from(warmup: float, total_steps: int) -> int:
    """``warmup`` < 1 is a fraction of ``total_steps``; ``warmup`` >= 1 is a whole number of steps."""
    if (
        isinstance(warmup, bool)
        or not isinstance(warmup, (int, float))
        or warmup < 0
        or not math.isfinite(warmup)
    ):
        raise ValueError(
            f"warmup must be a fraction in [0, 1) or a whole number of steps >= 1, got {warmup!r}"
        )
    if warmup < 1:
        return int(round(warmup * total_steps))
    if warmup != int(warmup):
        raise ValueError(f"warmup >= 1 counts steps and must be a whole number, got {warmup!r}")
    return int(warmup)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """The lr multiplier at ``step`` (0-based): (step+1)/warmup during warmup, then
    0.5 (1 + cos(π · progress)) with progress going from 0 to 1 over the remaining steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_constant(step: int, warmup_steps: int) -> float:
    """The lr multiplier at ``step`` (0-based): (step+1)/warmup during warmup, then 1."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def adamw_with_schedule(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], warmup: float, total_steps: int,
    schedule: Literal["cosine", "constant"] = "cosine",
) -> dict:
    """``configure_optimizers``' return value: AdamW over the model's tagged parameter groups
    (:func:`ssmzoo.optim.param_groups`) and a per-step LambdaLR with linear warmup, then cosine decay to zero
    at ``total_steps`` or a constant rate."""
    groups = param_groups(model, lr, weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=betas)
    total = max(1, int(total_steps))
    warmup_steps = warmup_steps_from(warmup, total)
    if schedule == "cosine":
        multiplier = functools.partial(warmup_cosine, warmup_steps=warmup_steps, total_steps=total)
    else:
        multiplier = functools.partial(warmup_constant, warmup_steps=warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
