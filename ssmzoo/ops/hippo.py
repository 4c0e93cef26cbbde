"""HiPPO transition matrices (Gu, Johnson, Timalsina, Rudra & Ré, "How to Train Your HiPPO", arXiv:2206.12037)
and their NPLR/DPLR forms.

Each measure gives a continuous-time system x'(t) = A x(t) + B u(t) whose state holds the
coefficients of the input's history in a basis of orthogonal functions:
- ``legs``: scaled Legendre on [0, t] (timescale-free);
- ``legt``: translated Legendre on the window [t - θ, t] (θ = 1 here; rescale time for other θ);
- ``lagt``: translated Laguerre (exponentially decaying memory);
- ``fout``: truncated Fourier on the window [t - 1, t].

Every one of these A is normal plus low rank (NPLR, S4 Thm. 1): A + P Pᵀ = c·I + S with S
skew-symmetric, so A = V (Λ - P̃ P̃*) V* with V unitary, Λ = c + i·eig(S/i), P̃ = V* P.
:func:`nplr` returns the diagonal-plus-low-rank (DPLR) pieces keeping one eigenvalue of each
conjugate pair, the form the S4 kernel uses; :func:`dplr_dense` rebuilds the dense A from them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

MEASURES = ("legs", "legt", "lagt", "fout")


def legs(n: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """HiPPO-LegS (A, B): A_nk = -sqrt(2n+1) sqrt(2k+1) for n > k, -(n+1) on the diagonal, 0 above;
    B_n = sqrt(2n+1)."""
    q = torch.sqrt(2 * torch.arange(n, dtype=dtype) + 1)
    a = -torch.tril(q[:, None] * q[None, :], diagonal=-1) - torch.diag(torch.arange(n, dtype=dtype) + 1)
    return a, q.clone()


def legt(n: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """HiPPO-LegT (A, B) for a window of length θ = 1, in the normalised basis
    sqrt(2n+1) P_n(2(s - t)/θ + 1) (HiPPO, Gu et al. 2020, Thm. 1 / App. D.1):
    A_nk = -sqrt(2n+1) sqrt(2k+1) · (1 if n >= k else (-1)^(n-k)), B_n = sqrt(2n+1).

    (S4's code halves both, which only rescales time, i.e. the window, by 2.)"""
    k = torch.arange(n, dtype=dtype)
    q = torch.sqrt(2 * k + 1)
    i, j = k[:, None], k[None, :]
    sign = torch.where(i >= j, torch.ones((), dtype=dtype), (-1.0) ** (i - j))
    return -q[:, None] * sign * q[None, :], q.clone()


def lagt(n: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """HiPPO-LagT (A, B) (Laguerre, β = 1): A = I/2 - tril(1), B = 1."""
    a = torch.eye(n, dtype=dtype) / 2 - torch.tril(torch.ones(n, n, dtype=dtype))
    return a, torch.ones(n, dtype=dtype)


def fout(n: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """HiPPO-FouT (A, B), window 1 (How to Train Your HiPPO, App. C), in S4's ordering: index 0 the
    constant, index 1 an unused slot (sin 0), then (2f, 2f+1) the frequency-f (cos, sin) pair.
    A = π·(rotation blocks) - B Bᵀ (the B Bᵀ term removes the input leaving the window),
    B = (1, 0, √2, 0, √2, 0, ...)."""
    freqs = torch.arange(n // 2, dtype=dtype)
    d = torch.stack([torch.zeros(n // 2, dtype=dtype), freqs], dim=-1).reshape(-1)[1:n]
    a = math.pi * (-torch.diag(d, 1) + torch.diag(d, -1))
    b = torch.zeros(n, dtype=dtype)
    b[0::2] = math.sqrt(2)
    b[0] = 1.0
    return a - b[:, None] * b[None, :], b


def transition(measure: str, n: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """The dense (A (n, n), B (n,)) of a HiPPO measure (one of MEASURES)."""
    fns = {"legs": legs, "legt": legt, "lagt": lagt, "fout": fout}
    if measure not in fns:
        raise ValueError(f"hippo: unknown measure {measure!r}; expected one of {', '.join(MEASURES)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"hippo: the state size n must be a positive int, got {n!r}")
    return fns[measure](n, dtype)


def rank_correction(measure: str, n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """P (rank, n) such that A + Pᵀ P is a multiple of I plus a skew-symmetric matrix."""
    k = torch.arange(n, dtype=dtype)
    if measure == "legs":
        return torch.sqrt(k + 0.5)[None]
    if measure == "legt":
        # A + P Pᵀ cancels the symmetric part sqrt(2n+1)sqrt(2k+1)[n ≡ k mod 2]: one rank-1 term per parity.
        q = torch.sqrt(2 * k + 1)
        even, odd = q.clone(), q.clone()
        even[1::2] = 0
        odd[0::2] = 0
        return torch.stack([even, odd])
    if measure == "lagt":
        return torch.full((1, n), math.sqrt(0.5), dtype=dtype)
    if measure == "fout":
        return fout(n, dtype)[1][None]
    raise ValueError(f"hippo: unknown measure {measure!r}; expected one of {', '.join(MEASURES)}")


class DPLR(NamedTuple):
    """A = V (diag(Λ) - P̃ P̃*) V* in the conjugate-pair-halved form (n even).

    lam (n/2,) complex, one eigenvalue of each conjugate pair; p (rank, n/2) and b (n/2,) complex
    are P and B in the eigenbasis; v (n, n/2) the matching eigenvectors. The other half is the
    complex conjugate of each: V_full = [V, conj V], Λ_full = [Λ, conj Λ], P̃_full = [P̃, conj P̃]."""

    lam: Tensor
    p: Tensor
    b: Tensor
    v: Tensor


def nplr(measure: str, n: int, dtype: torch.dtype = torch.complex128) -> DPLR:
    """The DPLR pieces of HiPPO ``measure`` at state size ``n`` (even), computed in float64."""
    if not isinstance(n, int) or n < 2 or n % 2:
        raise ValueError(f"hippo.nplr: the state size n must be an even int >= 2, got {n!r}")
    # One small eigendecomposition: threads gain nothing, and on a busy machine LAPACK's OpenMP
    # threads can make it 100x slower (measured: 10 s instead of 0.04 s at n = 256).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _nplr(measure, n, dtype)
    finally:
        torch.set_num_threads(threads)


def _nplr(measure: str, n: int, dtype: torch.dtype) -> DPLR:
    a, b = transition(measure, n)
    p = rank_correction(measure, n)
    normal = a + p.T @ p
    c = torch.diagonal(normal).mean()
    skew = normal - c * torch.eye(n, dtype=torch.float64)
    if (skew + skew.T).abs().max() > 1e-8 * max(1.0, skew.abs().max().item()):
        raise RuntimeError(f"hippo.nplr: {measure} A + PᵀP is not a multiple of I plus skew-symmetric")
    # S is real skew-symmetric, so -iS is Hermitian: real eigenvalues μ in ± pairs with eigenvectors
    # v and conj(v); S v = iμ v.
    mu, vecs = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    tol = 1e-7 * max(1.0, mu.abs().max().item())
    pos = mu > tol
    v_half, mu_half = vecs[:, pos], mu[pos]
    null = vecs[:, mu.abs() <= tol]
    if null.shape[1]:
        # Zero eigenvalues (FouT's unused sin(0) slot): the null space is real, of even dimension;
        # pair a real orthonormal basis q_1, q_2, ... into (q_1 + i q_2)/√2 so conjugates still pair up.
        real_basis = torch.linalg.svd(torch.cat([null.real, null.imag], 1), full_matrices=False)[0]
        real_basis = real_basis[:, : null.shape[1]]
        paired = (real_basis[:, 0::2] + 1j * real_basis[:, 1::2]) / math.sqrt(2)
        v_half = torch.cat([v_half, paired], 1)
        mu_half = torch.cat([mu_half, torch.zeros(paired.shape[1], dtype=mu.dtype)])
    if v_half.shape[1] != n // 2:
        raise RuntimeError(f"hippo.nplr: {measure} eigenvalues do not come in conjugate pairs")
    lam = torch.complex(c.expand_as(mu_half).clone(), mu_half)
    vh = v_half.conj().T
    out = DPLR(lam, p.to(torch.complex128) @ vh.T, vh @ b.to(torch.complex128), v_half)
    return DPLR(*(t.to(dtype) for t in out))


def dplr_dense(lam: Tensor, p: Tensor, v: Tensor) -> Tensor:
    """Rebuild the dense A = V_full (Λ_full - P̃_full P̃_full*) V_full* (real up to rounding)."""
    v_full = torch.cat([v, v.conj()], 1)
    lam_full = torch.cat([lam, lam.conj()])
    p_full = torch.cat([p, p.conj()], -1)  # (rank, n)
    inner = torch.diag(lam_full) - p_full.T @ p_full.conj()
    return v_full @ inner @ v_full.conj().T


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
