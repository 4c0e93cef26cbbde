"""The diagonal-plus-low-rank (DPLR) SSM of S4 (Gu, Goel & Ré, "Efficiently Modeling Long Sequences with
Structured State Spaces", arXiv:2111.00396) as plain functions.

Per channel h the continuous system has A = Λ - P P* (Q = P, as in S4 v2), written with one
entry of each conjugate pair: lam (H, n), p (rank, H, n), b (H, n), c (K, H, n) complex with
n = N/2. The full N-dim system is [x, conj x]; an inner product with P over the full state is
therefore real: P* x_full = 2 Re Σ_n conj(p_n) x_n.

Two equivalent views are used:
- the *generating function* at the L-th roots of unity ω (S4 Alg. 1, bilinear discretisation):
      K̂(ω) = 2/(1+ω) · [k00 - k01 (I + k11)⁻¹ k10],  k_ab = Σ ã_n b_n Δ / (z - Δ λ_n),
      z = 2(1-ω)/(1+ω), with C̃ = C (I - Ā^L) as the row ã (Woodbury for the rank-r term);
- the *real coordinates* r = [Re x, Im x] (N real numbers), where A, B̄, Ā are dense real
  matrices: the readable recurrence x_t = Ā x_{t-1} + B̄ u_t, y_t = C x_t.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor

from .cauchy import cauchy


# -- generating function (convolution kernel) ---------------------------------------------------
def dplr_kernel(
    lam: Tensor, p: Tensor, b_cols: Tensor, c_tilde: Tensor, dt: Tensor, length: int, backend: str | None = None
) -> Tensor:
    """K (K, S, H, L) with K[k, s, h, l] = C̄_k Ā^l B̄_s, from C̃ = C̄ (I - Ā^L) for this ``length``.

    lam (H, n), p (r, H, n) (r may be 0), b_cols (S, H, n), c_tilde (K, H, n) complex; dt (H,) real.
    For b_cols = (I + Δ/2 A) s / Δ the result is C̄ Ā^(l+1) s: the output of an initial state s."""
    kk, ss, r = c_tilde.shape[0], b_cols.shape[0], p.shape[0]
    cdtype = lam.dtype
    k = torch.arange(length // 2 + 1, device=lam.device, dtype=dt.dtype)
    omega = torch.polar(torch.ones_like(k), -2 * math.pi * k / length)  # rfft frequencies
    nyquist = length % 2 == 0  # ω = -1 is a node: z = ∞ there; its value is taken as the limit below
    if nyquist:
        omega = omega[:-1]
    z = (2 * (1 - omega) / (1 + omega)).to(cdtype)
    dtc = dt.to(cdtype)[:, None]  # (H, 1)
    # rows: [C̃_1..C̃_K, Q*] (Q* = conj(P) as a row); columns: [B_1..B_S, P]
    rows = torch.cat([c_tilde, p.conj()], 0)
    cols = torch.cat([b_cols, p], 0)
    v = rows[:, None] * cols[None]  # (K+r, S+r, H, n)
    res = cauchy(v, z, lam * dtc, backend=backend) * dtc[..., None][None, None, :, 0]  # (K+r, S+r, H, Lf)
    if r:
        # split, not slices: the four blocks' gradients are joined once instead of each filling a zero tensor
        top, bottom = res.split([kk, r], 0)
        (k_hat, k01), (k10, k11) = top.split([ss, r], 1), bottom.split([ss, r], 1)
        if r == 1:  # a 1x1 system per (channel, frequency): a division (a batched LU solve cost ~5x the rest)
            k_hat = k_hat - k01 * (k10 / (k11 + 1))
        else:
            eye = torch.eye(r, dtype=cdtype, device=lam.device)
            m = rearrange(k11, "i j h f -> h f i j") + eye
            x = torch.linalg.solve(m, rearrange(k10, "i s h f -> h f i s"))  # (H, Lf, r, S)
            k_hat = k_hat - torch.einsum("kjhf,hfjs->kshf", k01, x)
    else:
        k_hat = res
    k_hat = k_hat * (2 / (1 + omega)).to(cdtype)
    if nyquist:
        # lim_{ω→-1}: (g - A)⁻¹ → 1/g, so K̂(-1) = (Δ/2) Σ_full C̃ B = Δ Re Σ_n c̃_n b_n.
        limit = dt * torch.einsum("khn,shn->ksh", c_tilde, b_cols).real
        k_hat = torch.cat([k_hat, limit[..., None].to(cdtype)], -1)
    return torch.fft.irfft(k_hat, n=length)


def state_columns(lam: Tensor, p: Tensor, s: Tensor, dt: Tensor) -> Tensor:
    """(I + Δ/2 A) s / Δ for states s (batch, H, n): the B-columns whose kernel is C̄ Ā^(l+1) s."""
    dtc = dt.to(lam.dtype)[:, None]
    a_s = lam * s - torch.einsum("rhn,brh->bhn", p, 2 * torch.einsum("rhn,bhn->brh", p.conj(), s).real.to(lam.dtype))
    return s / dtc + a_s / 2


# -- real coordinates ---------------------------------------------------------------------------
def to_real(x: Tensor) -> Tensor:
    """Half complex state (..., n) -> real coordinates (..., 2n) = [Re x, Im x]."""
    return torch.cat([x.real, x.imag], -1)


def from_real(r: Tensor) -> Tensor:
    n = r.shape[-1] // 2
    return torch.complex(r[..., :n], r[..., n:])


def row_to_real(c: Tensor) -> Tensor:
    """A row c (..., n) acting as y = Σ_full C x = 2 Re Σ c x -> its real row 2 [Re c, -Im c]."""
    return 2 * torch.cat([c.real, -c.imag], -1)


def row_from_real(c: Tensor) -> Tensor:
    n = c.shape[-1] // 2
    return torch.complex(c[..., :n], -c[..., n:]) / 2


def dense_real(lam: Tensor, p: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(A (H, N, N), B (H, N)) real, in coordinates [Re x, Im x]:
    A = [[diag Re Λ, -diag Im Λ], [diag Im Λ, diag Re Λ]] - 2 Σ_i [Re p_i; Im p_i][Re p_i; Im p_i]ᵀ."""
    re, im = torch.diag_embed(lam.real), torch.diag_embed(lam.imag)
    a = torch.cat([torch.cat([re, -im], -1), torch.cat([im, re], -1)], -2)
    pr = to_real(p)  # (r, H, N)
    a = a - 2 * torch.einsum("rhi,rhj->hij", pr, pr)
    return a, to_real(b)


def bilinear(a: Tensor, b: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """Ā = (I - Δ/2 A)⁻¹ (I + Δ/2 A), B̄ = (I - Δ/2 A)⁻¹ Δ B (S4 eq. 3); a (H, N, N), b (H, N), dt (H,)."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    half = (dt / 2)[:, None, None] * a
    back = eye - half
    a_bar = torch.linalg.solve(back, eye + half)
    b_bar = torch.linalg.solve(back, (dt[:, None] * b)[..., None])[..., 0]
    return a_bar, b_bar


def scan_final_state(a_bar: Tensor, bu: Tensor) -> Tensor:
    """Σ_l Ā^(L-1-l) bu_l for bu (batch, H, L, N) and Ā (H, N, N), by log-depth pairwise reduction."""
    length = bu.shape[2]
    size = 1 << max(0, (length - 1).bit_length())
    if size > length:  # zeros in front change nothing: they are the earliest inputs
        bu = torch.cat([bu.new_zeros(*bu.shape[:2], size - length, bu.shape[-1]), bu], 2)
    power = a_bar
    while bu.shape[2] > 1:
        pair = rearrange(bu, "b h (l two) n -> b h l two n", two=2)
        bu = torch.einsum("hij,bhlj->bhli", power, pair[..., 0, :]) + pair[..., 1, :]
        power = power @ power
    return bu[:, :, 0]


# -- one step in DPLR form: O(N r) -------------------------------------------------------------
def dplr_step_setup(lam: Tensor, p: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    """(E⁻¹, W) for :func:`dplr_step`: E = I - Δ/2 Λ (diagonal), W = (I + Δ/2 M)⁻¹ Δ/2 (H, r, r)
    with M_ij = 2 Re Σ_n conj(p_i) p_j / E_n (the Woodbury core of (I - Δ/2 A)⁻¹)."""
    dtc = dt.to(lam.dtype)[:, None]
    e_inv = 1 / (1 - dtc / 2 * lam)
    m = 2 * torch.einsum("ihn,jhn->hij", p.conj(), p * e_inv).real
    eye = torch.eye(p.shape[0], dtype=m.dtype, device=m.device)
    w = torch.linalg.inv(eye + (dt / 2)[:, None, None] * m) * (dt / 2)[:, None, None]
    return e_inv, w


def dplr_step(
    x: Tensor, u: Tensor, lam: Tensor, p: Tensor, b: Tensor, dt: Tensor, e_inv: Tensor, w: Tensor
) -> Tensor:
    """x_t = Ā x_{t-1} + B̄ u_t without forming Ā: forward Euler half step, then the backward half
    (I - Δ/2 A)⁻¹ by Woodbury. x (batch, H, n) complex, u (batch, H) real."""
    dtc = dt.to(lam.dtype)[:, None]

    def p_inner(y: Tensor) -> Tensor:  # P* y over the full state: real (batch, r, H)
        return 2 * torch.einsum("rhn,bhn->brh", p.conj(), y).real

    def p_times(s: Tensor) -> Tensor:  # P s for real s (batch, r, H)
        return torch.einsum("rhn,brh->bhn", p, s.to(lam.dtype))

    f = x + dtc / 2 * (lam * x - p_times(p_inner(x))) + dtc * b * u[..., None].to(lam.dtype)
    g = e_inv * f
    correction = torch.einsum("hij,bjh->bih", w, p_inner(g))
    return g - e_inv * p_times(correction)
