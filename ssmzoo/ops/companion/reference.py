"""The companion SSM kernel of SpaceTime as written in the paper: k_l = cᵀ Aˡ b by explicit matrix
powers, O(ℓ d²): the oracle. Zhang, Saab, Poli, Dao, Goel & Ré, "Effectively Modeling Time Series with
Simple Discrete State Spaces" (arXiv:2303.09489), sec. 3. A = S + a e_dᵀ: S (d, d) has ones on the sub-diagonal (it shifts the
state down by one) and the learned vector a fills the last column."""

from __future__ import annotations

import torch
from torch import Tensor

from .inputs import CompanionInputs


def shift_matrix(d: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """S (d, d): ones on the sub-diagonal, so (S x)_i = x_{i-1} and (S x)_0 = 0."""
    return torch.diag(torch.ones(d - 1, dtype=dtype, device=device), -1)


def companion_matrix(a: Tensor) -> Tensor:
    """A = S + a e_dᵀ (..., d, d) from a (..., d): the shift with a as its last column."""
    d = a.shape[-1]
    last = torch.zeros(d, dtype=a.dtype, device=a.device)
    last[-1] = 1
    return shift_matrix(d, a.dtype, a.device) + a[..., :, None] * last


def companion_kernel_reference(x: CompanionInputs) -> Tensor:
    """k (..., ℓ) with k_l = cᵀ Aˡ b, by explicit matrix powers Aˡ (the oracle)."""
    length = x.length
    a, b, c = torch.broadcast_tensors(x.a, x.b, x.c)
    A = companion_matrix(a)
    power = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(A)
    out = []
    for _ in range(length):
        out.append(torch.einsum("...i,...ij,...j->...", c, power, b))
        power = power @ A
    return torch.stack(out, -1)
