"""Long causal convolutions by FFT: the convolution mode of the convolutional SSM layers (S4, S4D,
SpaceTime), whose whole-sequence output is y = K * u for a kernel K as long as the input."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from .padding import reverse_padded


def fft_conv(u: Tensor, k: Tensor) -> Tensor:
    """Causal convolution y_t = Σ_{s<=t} k_s u_{t−s} along the last dim, by FFT of size 2L.

    u (..., L); k broadcastable to u (..., L). Zero padding to 2L makes the circular FFT product linear."""
    length = u.shape[-1]
    n = 2 * length
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y[..., :length]


def ssm_convolution(x: Tensor, k: Tensor, channels: int, lengths: Tensor | None) -> Tensor:
    """The convolution part of an SSM layer: x (B, L, H), kernels k (kernels, H, L) -> (B, C, H, L).

    With ``2 * channels`` kernels the second half runs anti-causally, on each sequence reversed within
    its own length (``lengths`` (B,) or None), so padding never reaches the real tokens."""
    u = rearrange(x, "b l h -> b h l")
    y = fft_conv(u[:, None], k[:channels].to(u.dtype))
    if k.shape[0] > channels:
        u_rev = rearrange(reverse_padded(x, lengths), "b l h -> b h l")
        y_rev = fft_conv(u_rev[:, None], k[channels:].to(u.dtype))
        y = y + rearrange(reverse_padded(rearrange(y_rev, "b c h l -> b l c h"), lengths), "b l c h -> b c h l")
    return y
