"""Mamba's inner block as the ``causal_conv1d`` and ``selective_scan`` ops composed, each dispatched on its own
(reference.py has the equations): every device and dtype, and the backends the caller names."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from ..causal_conv1d import causal_conv1d
from ..selective_scan import selective_scan
from .inputs import MambaInnerInputs, State


def compose(x: MambaInnerInputs, output_final_state: bool, scan_backend: str | None,
            conv_backend: str | None) -> Tensor | tuple[Tensor, State]:
    """The two ops on the given backends."""
    xz, w = x.xz, x.weights
    conv_state, ssm_state = x.initial_state if x.initial_state is not None else (None, None)
    n = w.A_log.shape[1]
    rank = w.dt_proj_weight.shape[1]
    u, z = rearrange(xz, "b l d -> b d l").chunk(2, dim=1)
    u = causal_conv1d(u, w.conv_weight, w.conv_bias, "silu", initial_state=conv_state,
                      output_final_state=output_final_state, segments=x.segments, backend=conv_backend)
    if output_final_state:
        u, conv_state = u
    x_dbl = torch.einsum("bdl,ed->ble", u, w.x_proj_weight)
    dt, B, C = torch.split(x_dbl, [rank, n, n], dim=-1)
    delta = torch.einsum("dr,blr->bdl", w.dt_proj_weight, dt)
    y = selective_scan(u, delta, -torch.exp(w.A_log), rearrange(B, "b l n -> b n l"), rearrange(C, "b l n -> b n l"),
                       D=w.D, z=z, delta_bias=w.dt_proj_bias, delta_softplus=True, initial_state=ssm_state,
                       output_final_state=output_final_state, segments=x.segments, backend=scan_backend)
    if not output_final_state:
        return rearrange(y, "b d l -> b l d")
    y, ssm_state = y
    return rearrange(y, "b d l -> b l d"), (conv_state, ssm_state)


def mamba_inner_unfused(x: MambaInnerInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, State]:
    """The conv and scan ops composed, each dispatched on its own (the caller's backends)."""
    return compose(x, output_final_state, x.scan_backend, x.conv_backend)
