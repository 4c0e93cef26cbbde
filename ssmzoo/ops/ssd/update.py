"""One token of SSD (Mamba-2's recurrent mode): the state update of reference.py for a single step, O(1) in
the sequence length. Layers step with it while generating; it is tested against ``ssd`` over whole sequences.

Per head h, with Δ = clamp(softplus?(dt + dt_bias), dt_limit) (reference.discretize_dt, so forward and
step discretise alike):
    S ← exp(Δ A_h) S + Δ x Bᵀ,   y = S C + D_h x,   y *= silu(z) when z is given.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from .inputs import check_ssd_update
from .reference import discretize_dt


def ssd_update(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    state: Tensor,
    *,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
) -> tuple[Tensor, Tensor]:
    """One step of :func:`ssmzoo.ops.ssd.ssd`.

    x (batch, heads, headdim); dt (batch, heads); A (heads,); B, C (batch, groups, d_state), group g serving
    heads g·heads/groups .. (g+1)·heads/groups - 1; state (batch, heads, headdim, d_state), the state before
    this token; D (heads,) or (heads, headdim); z like x; dt_bias (heads,).
    Returns (y (batch, heads, headdim) in x's dtype, the next state (batch, heads, headdim, d_state) in
    float32, float64 for float64 x), the dtypes of ``ssd``'s outputs and final states."""
    check_ssd_update(x, dt, A, B, C, state, D, z, dt_bias, dt_softplus, dt_limit)
    in_dtype = x.dtype
    dtype = torch.promote_types(x.dtype, torch.float32)
    groups = B.shape[1]
    x = x.to(dtype)
    delta = discretize_dt(dt.to(dtype), dt_bias, dt_softplus, dt_limit)  # (batch, heads)
    decay = torch.exp(delta * A.to(dtype))
    # Heads grouped as (g r) so each group's B and C serve its r heads without being repeated.
    xg = rearrange(x * delta[..., None], "b (g r) p -> b g r p", g=groups)
    S = rearrange(state.to(dtype) * decay[..., None, None], "b (g r) p n -> b g r p n", g=groups)
    S = S + einsum(xg, B.to(dtype), "b g r p, b g n -> b g r p n")
    y = rearrange(einsum(S, C.to(dtype), "b g r p n, b g n -> b g r p"), "b g r p -> b (g r) p")
    if D is not None:
        y = y + (D.to(dtype)[:, None] if D.dim() == 1 else D.to(dtype)) * x
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(in_dtype), rearrange(S, "b g r p n -> b (g r) p n")
