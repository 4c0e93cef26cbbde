"""Long convolutions by FFT: the convolution mode of the convolutional SSM layers (S4, S4D, SpaceTime), whose
whole-sequence output is y = K * u for a kernel K as long as the input.

The gradients are written out (correlations by the same real FFTs) rather than left to autograd, whose
backward of ``rfft`` runs a complex FFT of the full size, about twice a real one; and a bidirectional layer's
two kernels share one FFT as a single two-sided kernel. ``fft_conv_reference`` is the plain autograd form the
tests hold these to."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from .padding import padding_mask


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum the broadcast dims of t (..., F) down to shape[:-1] (the last dim is the frequency axis)."""
    lead = t.dim() - len(shape)
    if lead:
        t = t.sum(tuple(range(lead)))
    dims = tuple(i for i, s in enumerate(shape[:-1]) if s == 1 and t.shape[i] != 1)
    return t.sum(dims, keepdim=True) if dims else t


def _rfft_padded(x: Tensor, n: int) -> Tensor:
    """torch.fft.rfft(x, n=n) for n >= x.shape[-1]: the same transform, but the zero padding is written once (rfft's
    own padding zero-fills the whole size-n buffer, then copies x over half of it)."""
    length = x.shape[-1]
    if length == n:
        return torch.fft.rfft(x)
    buf = x.new_empty(x.shape[:-1] + (n,))
    buf[..., :length].copy_(x)
    buf[..., length:].zero_()
    return torch.fft.rfft(buf)


class _FFTConv(torch.autograd.Function):
    """y = (u ⊛ k)[..., :L] with an FFT of size n: u (..., L), k broadcastable to u, of length L or n."""

    @staticmethod
    def forward(ctx, u: Tensor, k: Tensor, n: int) -> Tensor:  # type: ignore[override]
        length = u.shape[-1]
        u_f, k_f = _rfft_padded(u, n), _rfft_padded(k, n)
        ctx.save_for_backward(u_f, k_f)
        ctx.n, ctx.u_shape, ctx.k_shape = n, u.shape, k.shape
        return torch.fft.irfft(u_f * k_f, n=n)[..., :length]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        u_f, k_f = ctx.saved_tensors
        n, u_shape, k_shape = ctx.n, ctx.u_shape, ctx.k_shape
        # gradient of a convolution = correlation with the other factor: conj in frequency; the zero padding to
        # n keeps the circular products free of wrap-around, as in forward
        g_f = _rfft_padded(grad, n)
        grad_u = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_u = torch.fft.irfft(_sum_to(g_f * k_f.conj(), u_shape), n=n)[..., : u_shape[-1]]
        if ctx.needs_input_grad[1]:
            grad_k = torch.fft.irfft(_sum_to(g_f * u_f.conj(), k_shape), n=n)[..., : k_shape[-1]]
        return grad_u, grad_k, None


def fft_conv(u: Tensor, k: Tensor) -> Tensor:
    """Causal convolution y_t = Σ_{s<=t} k_s u_{t−s} along the last dim, by FFT of size 2L.

    u (..., L); k broadcastable to u (..., L), or (..., 2L): a two-sided kernel (:func:`two_sided_kernel`),
    whose second half holds the anti-causal lags. Zero padding to 2L makes the circular FFT product linear."""
    length = u.shape[-1]
    if k.shape[-1] not in (length, 2 * length):
        raise ValueError(f"fft_conv: k must have length L={length} or 2L={2 * length}, got {k.shape[-1]}")
    return _FFTConv.apply(u, k, 2 * length)


def fft_conv_reference(u: Tensor, k: Tensor) -> Tensor:
    """:func:`fft_conv` with autograd's gradients: the readable twin the tests compare it with."""
    length = u.shape[-1]
    n = 2 * length
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :length]


def two_sided_kernel(causal: Tensor, anticausal: Tensor) -> Tensor:
    """(..., L) causal and anti-causal kernels -> one (..., 2L) kernel for :func:`fft_conv`: y_t reads
    causal[s] · u_{t−s} and anticausal[s] · u_{t+s} (both at lag 0). Index 2L − s of a size-2L circular
    convolution is lag −s, and inputs and outputs of length L never wrap onto each other."""
    length = causal.shape[-1]
    back = torch.cat([anticausal[..., :1], anticausal.new_zeros(anticausal.shape[:-1] + (length,)),
                      anticausal[..., 1:].flip(-1)], -1)
    return torch.cat([causal, causal.new_zeros(causal.shape)], -1) + back


def ssm_convolution(x: Tensor, k: Tensor, channels: int, lengths: Tensor | None) -> Tensor:
    """The convolution part of an SSM layer: x (B, L, H), kernels k (kernels, H, L) -> (B, C, H, L).

    With ``2 * channels`` kernels the second half runs anti-causally, reading each sequence only up to its own
    length (``lengths`` (B,) or None): the padding is zeroed first, so it never reaches the real tokens."""
    u = rearrange(x, "b l h -> b h l")
    k = k.to(u.dtype)
    if k.shape[0] > channels:
        if lengths is not None:
            u = torch.where(padding_mask(lengths, u.shape[-1])[:, None], u, u.new_zeros(()))
        k = two_sided_kernel(k[:channels], k[channels:])
    return fft_conv(u[:, None], k)
