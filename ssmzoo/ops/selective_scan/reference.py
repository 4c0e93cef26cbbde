"""The selective scan of Mamba (Gu & Dao 2023, Algorithm 2), sequentially: the oracle.

Per batch element b, channel d and state index n, with Δ_t = softplus(δ_t + bias) (or δ_t + bias):
    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t          (zero-order hold for A, Euler for B; eq. 4)
    y_t = C_t · h_t + D u_t,   then y_t *= silu(z_t)
Every fast backend is tested against this function.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor


class ScanInputs(NamedTuple):
    """One selective scan's inputs, as every backend receives them (the public function checks them).

    u, delta (batch, D, L); A (D, N) real; B, C (D, N), (batch, N, L) or (batch, G, N, L) with G
    dividing D; D (D,); z (batch, D, L) gates the output by silu(z); delta_bias (D,) is added to
    delta before the optional softplus; initial_state (batch, D, N)."""

    u: Tensor
    delta: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor | None = None
    z: Tensor | None = None
    delta_bias: Tensor | None = None
    delta_softplus: bool = False
    initial_state: Tensor | None = None


def expand_input_matrix(BC: Tensor, d_inner: int, length: int) -> Tensor:
    """B or C in any accepted layout as a tensor broadcastable to (batch, D, N, L).

    (D, N): time-invariant per channel; (batch, N, L): shared by all channels;
    (batch, G, N, L): channel d uses group d // (D / G) (contiguous groups, as in mamba-ssm)."""
    if BC.dim() == 2:
        return BC[None, :, :, None].expand(-1, -1, -1, length)
    if BC.dim() == 3:
        return BC[:, None]
    groups = BC.shape[1]
    return repeat(BC, "b g n l -> b (g h) n l", h=d_inner // groups)


def selective_scan_reference(x: ScanInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """y (batch, D, L) [, final state (batch, D, N)] of the scan described by ``x``.

    Computes in float32 (or float64 for float64 inputs) and returns y in u's dtype."""
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state = x
    in_dtype = u.dtype
    dtype = torch.promote_types(u.dtype, torch.float32)
    batch, d_inner, length = u.shape
    u, delta, A = u.to(dtype), delta.to(dtype), A.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B = expand_input_matrix(B.to(dtype), d_inner, length)
    C = expand_input_matrix(C.to(dtype), d_inner, length)

    if initial_state is None:
        h = u.new_zeros(batch, d_inner, A.shape[1])
    else:
        h = initial_state.to(dtype)
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]  # (batch, D, 1)
        h = torch.exp(dt * A) * h + dt * B[..., t] * u[:, :, t, None]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(in_dtype)
    return (y, h.to(in_dtype)) if output_final_state else y
