"""One token of the gated delta rule (a layer's ``step``): reference.py's update for a single position, O(1)
in the sequence length; tested against ``gated_delta_rule`` over whole sequences."""

from __future__ import annotations

import torch
from einops import einsum, repeat
from torch import Tensor

from .inputs import check_gated_delta_step


def gated_delta_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor,
                     scale: float | None = None) -> tuple[Tensor, Tensor]:
    """q, k (batch, heads_k, d_k); v (batch, heads_v, d_v); g, beta (batch, heads_v); state (batch, heads_v, d_k,
    d_v), the state before this token. Returns (o (batch, heads_v, d_v) in q's dtype, the next state in float32,
    float64 for float64 q): the dtypes of ``gated_delta_rule``'s outputs and final states."""
    check_gated_delta_step(q, k, v, g, beta, state, scale)
    dtype = torch.promote_types(q.dtype, torch.float32)
    group = v.shape[1] // q.shape[1]
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    out_dtype = q.dtype
    q, k = (repeat(t.to(dtype), "b h d -> b (h r) d", r=group) for t in (q, k))
    S = state.to(dtype) * torch.exp(g.to(dtype))[..., None, None]
    error = v.to(dtype) - einsum(S, k, "b h k v, b h k -> b h v")
    S = S + einsum(k, beta.to(dtype)[..., None] * error, "b h k, b h v -> b h k v")
    return (einsum(S, q, "b h k v, b h k -> b h v") * scale).to(out_dtype), S
