"""Everything one call of ``ssd_step`` takes, and its checks (the only place they live)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..ssd.inputs import check_ssd_update


class SsdStepInputs(NamedTuple):
    """x (batch, heads, headdim); dt (batch, heads); A (heads,); B, C (batch, groups, d_state), groups dividing
    heads; state (batch, heads, headdim, d_state), the state before this token; D (heads,) or (heads, headdim) or
    None; z like x or None; dt_bias (heads,) or None; dt_softplus; dt_limit (low, high)."""

    x: Tensor
    dt: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    state: Tensor
    D: Tensor | None = None
    z: Tensor | None = None
    dt_bias: Tensor | None = None
    dt_softplus: bool = False
    dt_limit: tuple[float, float] = (0.0, math.inf)


def check_ssd_step(inputs: SsdStepInputs) -> None:
    """A ValueError naming the op and the argument for anything ``ssd_update``'s contract does not allow."""
    i = inputs
    check_ssd_update(i.x, i.dt, i.A, i.B, i.C, i.state, i.D, i.z, i.dt_bias, i.dt_softplus, i.dt_limit)


def fake_ssd_step(inputs: SsdStepInputs) -> tuple[Tensor, Tensor]:
    """Empty outputs shaped and typed like the reference's (the custom operators' fake implementation)."""
    dtype = torch.float64 if inputs.x.dtype == torch.float64 else torch.float32
    return inputs.x.new_empty(inputs.x.shape), inputs.state.new_empty(inputs.state.shape, dtype=dtype)
