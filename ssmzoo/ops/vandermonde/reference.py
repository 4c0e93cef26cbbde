"""The Vandermonde kernel of diagonal SSMs as written in S4D: the readable reference. Gu, Gupta, Goel & Ré,
"On the Parameterization and Initialization of Diagonal State Space Models" (arXiv:2206.11893), sec. 3.

K[..., l] = 2 Re Σ_n v_n z_n^l with z_n^l = exp(l log_z_n), materialising (..., N, L). The state a
diagonal SSM holds after reading u is the transposed product, :func:`vandermonde_transpose_reference`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .inputs import TransposeInputs, VandermondeInputs


def vandermonde_reference(x: VandermondeInputs) -> Tensor:
    """K (..., L) = 2 Re sum_n v[..., n] exp(log_z[..., n] l), l = 0..L-1."""
    v, log_z, length = x
    pos = torch.arange(length, device=v.device, dtype=v.real.dtype)
    powers = torch.exp(log_z.unsqueeze(-1) * pos)  # (..., N, L)
    return 2 * torch.einsum("...n,...nl->...l", v, powers).real


def vandermonde_transpose_reference(x: TransposeInputs) -> Tensor:
    """s[..., n] = sum_l u[..., l] z_n^(L-1-l), materialising (..., N, L)."""
    u, log_z = x
    length = u.shape[-1]
    expo = torch.arange(length - 1, -1, -1, device=u.device, dtype=log_z.real.dtype)
    return torch.einsum("...l,...nl->...n", u.to(log_z.dtype), torch.exp(log_z.unsqueeze(-1) * expo))
