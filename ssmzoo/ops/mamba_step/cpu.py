"""One token of the whole Mamba layer in one C++ call (csrc/mamba_cpu.cpp)."""

from __future__ import annotations

from torch import Tensor

from ..mamba_inner import State
from ..mamba_inner.cpu import extension
from .inputs import MambaStepInputs


def mamba_step_cpu(x: MambaStepInputs) -> tuple[Tensor, State]:
    """One token in one C++ call (csrc/mamba_cpu.cpp), same formulas as the reference."""
    x_t, state, w = x
    empty = x_t.new_empty(0)
    opt = lambda t: empty if t is None else t  # noqa: E731
    inner = w.inner
    y, conv_state, h = extension().step(
        x_t.contiguous(), state[0].contiguous(), state[1].contiguous(), w.in_proj_weight, opt(w.in_proj_bias),
        inner.conv_weight, opt(inner.conv_bias), inner.x_proj_weight, inner.dt_proj_weight, inner.dt_proj_bias,
        inner.A_log, inner.D, w.out_proj_weight, opt(w.out_proj_bias))
    return y, (conv_state, h)
