"""HiPPO transition matrices (PAPERS.md, "How to Train Your HiPPO") and the diagonal inits they give S4D."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def legs(n: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """HiPPO-LegS (A, B): A_nk = -sqrt(2n+1) sqrt(2k+1) for n > k, -(n+1) on the diagonal, 0 above;
    B_n = sqrt(2n+1)."""
    q = torch.sqrt(2 * torch.arange(n, dtype=dtype) + 1)
    a = -torch.tril(q[:, None] * q[None, :], diagonal=-1) - torch.diag(torch.arange(n, dtype=dtype) + 1)
    return a, q.clone()


def diagonal_init(name: str, n: int) -> Tensor:
    """The S4D initialisations of the diagonal A: ``n // 2`` eigenvalues, one of each conjugate pair.

    - ``legs``: the eigenvalues of the normal part of HiPPO-LegS (A + P Pᵀ with P_n = sqrt(n + 1/2)),
      i.e. -1/2 + i·(eigenvalues of its skew-symmetric part);
    - ``inv``:  λ_n = -1/2 + i N/π (N/(2n+1) - 1);
    - ``lin``:  λ_n = -1/2 + i π n;
    - ``real``: λ_n = -(n+1).
    """
    if n < 2 or n % 2:
        raise ValueError(f"diagonal_init: the state size must be an even int >= 2, got {n}")
    half = n // 2
    k = torch.arange(half, dtype=torch.float64)
    if name == "legs":
        a, _ = legs(n)
        p = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)
        normal = a + p[:, None] * p[None, :]  # = -1/2 I + skew-symmetric
        imag = torch.linalg.eigvalsh(-1j * (normal - normal.T).to(torch.complex128) / 2)  # real, ± pairs
        imag = torch.sort(imag[imag > 0]).values[:half]
        return torch.complex(torch.full((half,), -0.5, dtype=torch.float64), imag)
    if name == "inv":
        return torch.complex(torch.full((half,), -0.5, dtype=torch.float64), n / math.pi * (n / (2 * k + 1) - 1))
    if name == "lin":
        return torch.complex(torch.full((half,), -0.5, dtype=torch.float64), math.pi * k)
    if name == "real":
        return torch.complex(-(k + 1), torch.zeros_like(k))
    raise ValueError(f"diagonal_init: unknown init {name!r}; expected one of legs, inv, lin, real")
