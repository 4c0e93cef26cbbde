"""The companion SSM kernel of SpaceTime (Zhang et al., ICLR 2023; PAPERS.md): k_l = cᵀ Aˡ b.

A = S + a e_dᵀ is a companion matrix: S (d, d) has ones on the sub-diagonal (it shifts the state
down by one) and the learned vector a fills the last column. Three ways to compute the kernel,
each a plain function of a, b, c (..., d) real (broadcastable) and the length ℓ:

- :func:`companion_kernel_reference`: matrix powers, O(ℓ d²): the oracle.
- :func:`companion_kernel_krylov`: the Krylov matrix [b, Ab, A²b, ...] by repeated squaring,
  O(d² ℓ) work in O(log ℓ) batched matmuls.
- :func:`companion_kernel_fft`: the paper's algorithm, O((d + ℓ) log(d + ℓ)). Over the ℓ-th roots
  of unity z, Σ_{l<ℓ} cᵀAˡb zˡ = c̃ᵀ(I − zA)⁻¹b with c̃ = c − (Aˡ)ᵀc (because z^ℓ = 1), so the
  kernel is the inverse FFT of that generating function. With M = I − zS, I − zA = M − z a e_dᵀ
  and Sherman–Morrison gives
      c̃ᵀ(I − zA)⁻¹b = c̃ᵀM⁻¹b + z (c̃ᵀM⁻¹a)(e_dᵀM⁻¹b) / (1 − z e_dᵀM⁻¹a).
  S is nilpotent, so M⁻¹ = Σ_{m<d} zᵐ Sᵐ and every uᵀM⁻¹v is a polynomial in z whose coefficients
  are the cross-correlation r_m = Σ_i u_i v_{i−m}: one FFT correlation, then one FFT to evaluate
  it at the roots of unity. SpaceTime learns c̃ directly; :func:`c_tilde` converts from c.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor


def shift_matrix(d: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """S (d, d): ones on the sub-diagonal, so (S x)_i = x_{i-1} and (S x)_0 = 0."""
    return torch.diag(torch.ones(d - 1, dtype=dtype, device=device), -1)


def companion_matrix(a: Tensor) -> Tensor:
    """A = S + a e_dᵀ (..., d, d) from a (..., d): the shift with a as its last column."""
    d = a.shape[-1]
    last = torch.zeros(d, dtype=a.dtype, device=a.device)
    last[-1] = 1
    return shift_matrix(d, a.dtype, a.device) + a[..., :, None] * last


def _check(a: Tensor, b: Tensor, c: Tensor, length: int, fn: str) -> None:
    for name, t in (("a", a), ("b", b), ("c", c)):
        if not isinstance(t, Tensor) or t.dim() < 1 or not t.is_floating_point():
            raise ValueError(f"{fn}: {name} must be a real floating tensor (..., d), got {type(t).__name__}")
    if not (a.shape[-1] == b.shape[-1] == c.shape[-1]):
        raise ValueError(
            f"{fn}: a, b, c must share the state size d (last dim), got {a.shape[-1]}, {b.shape[-1]}, {c.shape[-1]}"
        )
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"{fn}: length must be a positive int, got {length!r}")


def companion_kernel_reference(a: Tensor, b: Tensor, c: Tensor, length: int) -> Tensor:
    """k (..., ℓ) with k_l = cᵀ Aˡ b, by explicit matrix powers Aˡ (the oracle)."""
    _check(a, b, c, length, "companion_kernel_reference")
    a, b, c = torch.broadcast_tensors(a, b, c)
    A = companion_matrix(a)
    power = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(A)
    out = []
    for _ in range(length):
        out.append(torch.einsum("...i,...ij,...j->...", c, power, b))
        power = power @ A
    return torch.stack(out, -1)


def krylov(A: Tensor, b: Tensor, length: int) -> Tensor:
    """K (..., d, ℓ) with K[..., :, l] = Aˡ b, by doubling: [K, A^m K] with A^m squared each round."""
    K = b[..., :, None]
    power = A
    while K.shape[-1] < length:
        K = torch.cat([K, power @ K], dim=-1)
        power = power @ power
    return K[..., :length]


def companion_kernel_krylov(a: Tensor, b: Tensor, c: Tensor, length: int) -> Tensor:
    """k (..., ℓ) = cᵀ [b, Ab, ..., A^{ℓ-1}b] with the Krylov matrix built by repeated squaring."""
    _check(a, b, c, length, "companion_kernel_krylov")
    a, b, c = torch.broadcast_tensors(a, b, c)
    K = krylov(companion_matrix(a), b, length)
    return torch.einsum("...d,...dl->...l", c, K)


def c_tilde(a: Tensor, c: Tensor, length: int) -> Tensor:
    """c̃ = c − (A^ℓ)ᵀ c (..., d): the output vector the FFT algorithm needs for length ℓ."""
    A_pow = torch.linalg.matrix_power(companion_matrix(a), length)
    return c - torch.einsum("...ij,...i->...j", A_pow, c)


def _correlation(u: Tensor, v: Tensor) -> Tensor:
    """r (..., d) with r_m = Σ_i u_i v_{i−m}: the coefficients of zᵐ in uᵀ(I − zS)⁻¹v."""
    d = u.shape[-1]
    n = 2 * d  # room for the negative lags, so they do not wrap onto m >= 0
    r = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(v, n=n).conj(), n=n)
    return r[..., :d]


def _at_roots_of_unity(coef: Tensor, length: int) -> Tensor:
    """Σ_m coef_m z_jᵐ at z_j = exp(−2πi j/ℓ), j < ℓ: an FFT, after folding m mod ℓ (z_j^ℓ = 1)."""
    d = coef.shape[-1]
    if d > length:
        folds = math.ceil(d / length)
        coef = torch.nn.functional.pad(coef, (0, folds * length - d))
        coef = coef.reshape(*coef.shape[:-1], folds, length).sum(-2)
    return torch.fft.fft(coef, n=length)


def companion_kernel_fft(a: Tensor, b: Tensor, c_tilde: Tensor, length: int) -> Tensor:
    """k (..., ℓ) from the learned-c̃ form, in O((d + ℓ) log(d + ℓ)) (see the module docstring).

    ``c_tilde`` is c̃ = c − (A^ℓ)ᵀc for this ℓ (see :func:`c_tilde`); a, b, c_tilde (..., d)."""
    _check(a, b, c_tilde, length, "companion_kernel_fft")
    z = torch.exp(
        -2j * math.pi * torch.arange(length, device=a.device, dtype=a.dtype) / length
    )  # the roots of unity, in the FFT's order
    cb = _at_roots_of_unity(_correlation(c_tilde, b), length)  # c̃ᵀM⁻¹b
    ca = _at_roots_of_unity(_correlation(c_tilde, a), length)  # c̃ᵀM⁻¹a
    eb = _at_roots_of_unity(b.flip(-1), length)  # e_dᵀM⁻¹b = Σ_m zᵐ b_{d−1−m}
    ea = _at_roots_of_unity(a.flip(-1), length)  # e_dᵀM⁻¹a
    generating = cb + z * ca * eb / (1 - z * ea)  # Sherman–Morrison
    return torch.fft.ifft(generating, n=length).real


def companion_kernel(
    a: Tensor,
    b: Tensor,
    c: Tensor,
    length: int,
    method: Literal["fft", "krylov", "reference"] = "fft",
) -> Tensor:
    """k (..., ℓ) with k_l = cᵀ Aˡ b, A = S + a e_dᵀ; a, b, c (..., d) real, broadcastable.

    ``method``: "fft" (O((d + ℓ) log), via c̃ = c − (A^ℓ)ᵀc computed by O(d³ log ℓ) squaring),
    "krylov" or "reference"."""
    if method == "fft":
        _check(a, b, c, length, "companion_kernel")
        return companion_kernel_fft(a, b, c_tilde(a, c, length), length)
    if method == "krylov":
        return companion_kernel_krylov(a, b, c, length)
    if method == "reference":
        return companion_kernel_reference(a, b, c, length)
    raise ValueError(f"companion_kernel: method must be 'fft', 'krylov' or 'reference', got {method!r}")


def companion_final_state(a: Tensor, b: Tensor, u: Tensor, w: Tensor, state: Tensor | None) -> Tensor:
    """x_{L−1} (..., d) of x_t = A x_{t−1} + b u_t read over u (..., L) from x_{−1} = ``state``.

    Only the last state coordinate w_t = (x_t)_{d−1} feeds back through a, so with
    ``w`` (..., L) that coordinate's sequence (itself one companion convolution, c = e_d):
        x_{L−1}[i] = (S^L x_{−1})_i + Σ_{m ≤ min(i, L−1)} a_{i−m} w_{L−2−m} + b_{i−m} u_{L−1−m},
    with w_{−1} = (x_{−1})_{d−1}: two length-d causal convolutions instead of an O(d ℓ) scan."""
    d, length = a.shape[-1], u.shape[-1]
    w_first = state[..., -1:] if state is not None else torch.zeros_like(w[..., :1])
    w_prev = torch.cat([w_first.expand(*w.shape[:-1], 1), w[..., :-1]], dim=-1)  # w_{−1}, ..., w_{L−2}

    def last_d_reversed(seq: Tensor) -> Tensor:  # [seq_{L−1}, seq_{L−2}, ...] padded to length d
        r = seq.flip(-1)[..., :d]
        return torch.nn.functional.pad(r, (0, d - r.shape[-1]))

    n = 2 * d
    x = torch.fft.irfft(
        torch.fft.rfft(last_d_reversed(w_prev), n=n) * torch.fft.rfft(a, n=n)
        + torch.fft.rfft(last_d_reversed(u), n=n) * torch.fft.rfft(b, n=n),
        n=n,
    )[..., :d]
    if state is not None and length < d:
        x = x + torch.nn.functional.pad(state[..., : d - length], (length, 0))
    return x
