"""The data-dependent rotation of Mamba-3's B and C (the "RoPE trick" of the paper's complex SSM, §3.2).

A complex diagonal state of N/2 entries is a real state of N entries in which each entry pair turns by the
angle Δ_t θ_t per step; the turns telescope, so instead of rotating the state one rotates B_t and C_t by the
cumulative phase φ_t = Σ_{s≤t} Δ_s θ_s (B̄_t = R(φ_t) B_t, C̄_t = R(φ_t) C_t) and keeps a real, scalar-decay
state. ``angles`` gives one angle per pair; entries past the rotated pairs are left as they are.

Two pairings (mamba-ssm uses both): ``interleaved`` pairs entries (2i, 2i + 1) for i < n_angles (its SISO
kernels); ``halves`` pairs entries (i, i + N/2) for i < n_angles (its MIMO kernels, GPT-NeoX's layout).
Each pair (u, w) becomes (u cos φ - w sin φ, u sin φ + w cos φ), i.e. u + i w times e^{iφ}.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotate(t: Tensor, cos: Tensor, sin: Tensor, pairs: str) -> Tensor:
    """t (..., N) rotated pairwise by the angles whose cos and sin are (..., n_angles) (broadcast against t)."""
    a = cos.shape[-1]
    if a == 0:
        return t
    n = t.shape[-1]
    if pairs == "interleaved":
        u, w = t[..., 0:2 * a:2], t[..., 1:2 * a:2]
        turned = torch.stack([u * cos - w * sin, u * sin + w * cos], dim=-1).flatten(-2)
        return torch.cat([turned, t[..., 2 * a:].expand(*turned.shape[:-1], n - 2 * a)], dim=-1)
    half = n // 2
    u, w = t[..., :a], t[..., half:half + a]
    u2, w2 = u * cos - w * sin, u * sin + w * cos
    rest = [t[..., a:half], t[..., half + a:]]
    shape = u2.shape[:-1]
    return torch.cat([u2, rest[0].expand(*shape, half - a), w2, rest[1].expand(*shape, n - half - a)], dim=-1)
