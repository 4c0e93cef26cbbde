"""One token of the whole Mamba layer (in_proj … out_proj), as the PyTorch formulas of ``Mamba.step``:
the readable reference of the ``mamba_step`` op."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..mamba_inner import State
from .inputs import MambaStepInputs


def mamba_step_reference(x: MambaStepInputs) -> tuple[Tensor, State]:
    """One token: x_t (batch, d_model), state (conv_state (batch, D, W-1), h (batch, D, N))."""
    x_t, (conv_state, h), w = x
    inner = w.inner
    u, z = F.linear(x_t, w.in_proj_weight, w.in_proj_bias).chunk(2, dim=-1)  # (batch, D) each
    window = torch.cat([conv_state.to(u.dtype), u[..., None]], dim=-1)  # (batch, D, W)
    u = F.silu((window * inner.conv_weight).sum(-1) + (inner.conv_bias if inner.conv_bias is not None else 0))
    conv_state = window[..., 1:]
    rank, n = inner.dt_proj_weight.shape[1], inner.A_log.shape[1]
    dt, B, C = torch.split(F.linear(u, inner.x_proj_weight), [rank, n, n], dim=-1)
    delta = F.softplus(F.linear(dt, inner.dt_proj_weight, inner.dt_proj_bias))  # (batch, D)
    A = -torch.exp(inner.A_log)
    # Zero-order hold for A, Euler for B (the paper's simplification, section 3.5 / mamba-ssm).
    h = torch.exp(delta[..., None] * A) * h + (delta * u)[..., None] * B[:, None, :]
    y = (torch.einsum("bdn,bn->bd", h, C) + inner.D * u) * F.silu(z)
    return F.linear(y, w.out_proj_weight, w.out_proj_bias), (conv_state, h)
