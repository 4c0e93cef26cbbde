"""Rotary position embedding (Su et al., "RoFormer", 2021).

Each pair of channels (x_{2i}, x_{2i+1}) of a query or key at position p is rotated by the angle
p · θ_i with θ_i = base^(−2i/d), so the score ⟨rot(q, p), rot(k, s)⟩ depends on the positions only
through p − s: attention sees relative positions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotary(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotate x (..., n, d) (d even) at integer positions (n,), or (..., n) broadcastable against x's leading
    dimensions (e.g. (batch, 1, n) for x (batch, heads, n, d): each sequence at its own positions); returns x's
    shape and dtype."""
    d = x.shape[-1]
    # angles in at least float32: p · θ_i in half precision is off by whole radians at p ~ 1000
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    freqs = base ** (-torch.arange(0, d, 2, device=x.device, dtype=compute) / d)
    angles = positions.to(compute)[..., None] * freqs  # (..., n, d/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)
