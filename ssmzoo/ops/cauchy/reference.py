"""The Cauchy kernel of S4, as written in the paper: the readable reference.

out[..., l] = Σ_n v_n / (z_l - w_n) + conj(v_n) / (z_l - conj(w_n)), materialising (..., N, L).
"""

from __future__ import annotations

from torch import Tensor


def cauchy_reference(v: Tensor, z: Tensor, w: Tensor) -> Tensor:
    """out (..., L) = Σ_n v_n / (z_l - w_n) + conj(v_n) / (z_l - conj(w_n)); materialises (..., N, L)."""
    v, w = v.unsqueeze(-1), w.unsqueeze(-1)
    return (v / (z - w) + v.conj() / (z - w.conj())).sum(-2)
