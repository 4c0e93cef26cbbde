"""The companion kernel from the Krylov matrix [b, Ab, A²b, ...], built by repeated squaring:
O(d² ℓ) work in O(log ℓ) batched matmuls."""

from __future__ import annotations

import torch
from torch import Tensor

from .inputs import CompanionInputs
from .reference import companion_matrix


def krylov(A: Tensor, b: Tensor, length: int) -> Tensor:
    """K (..., d, ℓ) with K[..., :, l] = Aˡ b, by doubling: [K, A^m K] with A^m squared each round."""
    K = b[..., :, None]
    power = A
    while K.shape[-1] < length:
        K = torch.cat([K, power @ K], dim=-1)
        power = power @ power
    return K[..., :length]


def companion_kernel_krylov(x: CompanionInputs) -> Tensor:
    """k (..., ℓ) = cᵀ [b, Ab, ..., A^{ℓ-1}b] with the Krylov matrix built by repeated squaring."""
    a, b, c = torch.broadcast_tensors(x.a, x.b, x.c)
    K = krylov(companion_matrix(a), b, x.length)
    return torch.einsum("...d,...dl->...l", c, K)
