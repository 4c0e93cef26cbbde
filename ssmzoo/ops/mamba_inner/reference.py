"""Mamba's inner block (Gu & Dao 2023, Fig. 3) between in_proj and out_proj, as the readable composition
of the ``causal_conv1d`` and ``selective_scan`` ops (their references, or the backends the caller names):

    x, z = xz.chunk(2, -1);  u = SiLU(causal depthwise conv(x))
    δ, B, C = split(x_proj(u));  Δ = softplus(dt_proj(δ) + b_Δ)   (the scan applies bias and softplus)
    y = selective_scan(u, Δ, A, B, C, D) · SiLU(z)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor

from ..causal_conv1d import causal_conv1d
from ..selective_scan import selective_scan


class MambaInnerWeights(NamedTuple):
    """One direction's parameters (mamba-ssm's names): conv_weight (D, W), conv_bias (D,) or None,
    x_proj_weight (R + 2N, D), dt_proj_weight (D, R), dt_proj_bias (D,), A_log (D, N), D (D,)."""

    conv_weight: Tensor
    conv_bias: Tensor | None
    x_proj_weight: Tensor
    dt_proj_weight: Tensor
    dt_proj_bias: Tensor
    A_log: Tensor
    D: Tensor


class MambaInnerInputs(NamedTuple):
    """xz (batch, length, 2·D); conv_state (batch, D, W-1) and ssm_state (batch, D, N) or None;
    scan_backend / conv_backend: the backends the unfused form asks of the two ops."""

    xz: Tensor
    weights: MambaInnerWeights
    conv_state: Tensor | None = None
    ssm_state: Tensor | None = None
    scan_backend: str | None = None
    conv_backend: str | None = None


State = tuple[Tensor, Tensor]


def _unfused(x: MambaInnerInputs, output_final_state: bool, scan_backend: str | None,
             conv_backend: str | None) -> Tensor | tuple[Tensor, State]:
    xz, w = x.xz, x.weights
    n = w.A_log.shape[1]
    rank = w.dt_proj_weight.shape[1]
    u, z = rearrange(xz, "b l d -> b d l").chunk(2, dim=1)
    u = causal_conv1d(u, w.conv_weight, w.conv_bias, "silu", initial_state=x.conv_state,
                      output_final_state=output_final_state, backend=conv_backend)
    if output_final_state:
        u, conv_state = u
    x_dbl = torch.einsum("bdl,ed->ble", u, w.x_proj_weight)
    dt, B, C = torch.split(x_dbl, [rank, n, n], dim=-1)
    delta = torch.einsum("dr,blr->bdl", w.dt_proj_weight, dt)
    y = selective_scan(u, delta, -torch.exp(w.A_log), rearrange(B, "b l n -> b n l"), rearrange(C, "b l n -> b n l"),
                       D=w.D, z=z, delta_bias=w.dt_proj_bias, delta_softplus=True, initial_state=x.ssm_state,
                       output_final_state=output_final_state, backend=scan_backend)
    if not output_final_state:
        return rearrange(y, "b d l -> b l d")
    y, ssm_state = y
    return rearrange(y, "b d l -> b l d"), (conv_state, ssm_state)


def mamba_inner_reference(x: MambaInnerInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, State]:
    """The readable form: the conv and scan references composed."""
    return _unfused(x, output_final_state, "reference", "reference")


def mamba_inner_unfused(x: MambaInnerInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, State]:
    """The conv and scan ops composed, each dispatched on its own (the caller's backends)."""
    return _unfused(x, output_final_state, x.scan_backend, x.conv_backend)
