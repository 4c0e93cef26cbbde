"""The paper's companion kernel algorithm, O((d + ℓ) log(d + ℓ)).

Over the ℓ-th roots of unity z, Σ_{l<ℓ} cᵀAˡb zˡ = c̃ᵀ(I − zA)⁻¹b with c̃ = c − (Aˡ)ᵀc (because
z^ℓ = 1), so the kernel is the inverse FFT of that generating function. With M = I − zS,
I − zA = M − z a e_dᵀ and Sherman–Morrison gives
    c̃ᵀ(I − zA)⁻¹b = c̃ᵀM⁻¹b + z (c̃ᵀM⁻¹a)(e_dᵀM⁻¹b) / (1 − z e_dᵀM⁻¹a).
S is nilpotent, so M⁻¹ = Σ_{m<d} zᵐ Sᵐ and every uᵀM⁻¹v is a polynomial in z whose coefficients
are the cross-correlation r_m = Σ_i u_i v_{i−m}: one FFT correlation, then one FFT to evaluate
it at the roots of unity. SpaceTime learns c̃ directly (:func:`companion_kernel_from_c_tilde`);
:func:`c_tilde` converts from c.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .inputs import CompanionInputs, check_companion
from .reference import companion_matrix


def matrix_power(A: Tensor, n: int) -> Tensor:
    """A^n (..., d, d). While compiling, n (a dynamic length is symbolic) is squared through a fixed 31 bits of it,
    each bit a tensor, so one traced graph serves every length below 2^31 (``torch.linalg.matrix_power`` takes a
    Python int and fixes it in the graph); squaring stops at the highest power of two in n, so nothing overflows
    that A^n itself would not."""
    if not torch.compiler.is_compiling():
        return torch.linalg.matrix_power(A, n)
    bits = torch.scalar_tensor(n, dtype=torch.int64, device=A.device)
    result = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(A)
    power = A  # A^(2^i)
    for i in range(31):
        result = torch.where(((bits >> i) & 1).bool(), result @ power, result)
        power = torch.where((bits >> (i + 1)) > 0, power @ power, power)
    return result


def c_tilde(a: Tensor, c: Tensor, length: int) -> Tensor:
    """c̃ = c − (A^ℓ)ᵀ c (..., d): the output vector the FFT algorithm needs for length ℓ."""
    A_pow = matrix_power(companion_matrix(a), length)
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


def companion_kernel_from_c_tilde(a: Tensor, b: Tensor, c_tilde: Tensor, length: int) -> Tensor:
    """k (..., ℓ) from the learned-c̃ form, in O((d + ℓ) log(d + ℓ)) (see the module docstring).

    ``c_tilde`` is c̃ = c − (A^ℓ)ᵀc for this ℓ (see :func:`c_tilde`); a, b, c_tilde (..., d)."""
    check_companion(CompanionInputs(a, b, c_tilde, length), "companion_kernel_from_c_tilde")
    return _from_c_tilde(a, b, c_tilde, length)


def _from_c_tilde(a: Tensor, b: Tensor, c_tilde: Tensor, length: int) -> Tensor:
    z = torch.exp(
        -2j * math.pi * torch.arange(length, device=a.device, dtype=a.dtype) / length
    )  # the roots of unity, in the FFT's order
    cb = _at_roots_of_unity(_correlation(c_tilde, b), length)  # c̃ᵀM⁻¹b
    ca = _at_roots_of_unity(_correlation(c_tilde, a), length)  # c̃ᵀM⁻¹a
    eb = _at_roots_of_unity(b.flip(-1), length)  # e_dᵀM⁻¹b = Σ_m zᵐ b_{d−1−m}
    ea = _at_roots_of_unity(a.flip(-1), length)  # e_dᵀM⁻¹a
    generating = cb + z * ca * eb / (1 - z * ea)  # Sherman–Morrison
    return torch.fft.ifft(generating, n=length).real


def companion_kernel_fft(x: CompanionInputs) -> Tensor:
    """k (..., ℓ) from c, via c̃ = c − (A^ℓ)ᵀc (O(d³ log ℓ) squaring) and the FFT algorithm."""
    return _from_c_tilde(x.a, x.b, c_tilde(x.a, x.c, x.length), x.length)
