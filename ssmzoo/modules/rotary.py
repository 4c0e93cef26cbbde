"""Rotary position embedding (Su et al., "RoFormer", 2021).

Each pair of channels of a query or key at position p is rotated by the angle p · θ_i with
θ_i = base^(−2i/d), so the score ⟨rot(q, p), rot(k, s)⟩ depends on the positions only through p − s:
attention sees relative positions. Two pairings are in use, and checkpoints fix theirs:

    interleaved (RoFormer, GPT-J):                            pair i = channels (2i, 2i + 1)
    halves (GPT-NeoX, Llama, transformers' ``rotate_half``):  pair i = channels (i, i + d/2)

θ_i is computed as transformers does, 1 / base^(2i/d) in float32, so a converted checkpoint's angles are its own.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotary(x: Tensor, positions: Tensor, base: float = 10000.0, interleaved: bool = True) -> Tensor:
    """Rotate x (..., n, d) (d even) at integer positions (n,), or (..., n) broadcastable against x's leading
    dimensions (e.g. (batch, 1, n) for x (batch, heads, n, d): each sequence at its own positions); returns x's
    shape and dtype. ``interleaved``: pairs (2i, 2i + 1), else (i, i + d/2)."""
    d = x.shape[-1]
    # angles in at least float32: p · θ_i in half precision is off by whole radians at p ~ 1000
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    freqs = 1.0 / base ** (torch.arange(0, d, 2, device=x.device, dtype=compute) / d)
    angles = positions.to(compute)[..., None] * freqs  # (..., n, d/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
