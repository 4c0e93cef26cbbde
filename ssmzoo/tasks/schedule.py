"""Learning-rate schedule of the S4 recipe: linear warmup, then cosine decay to zero, per step."""

from __future__ import annotations

import math


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
