"""fft_conv and ssm_convolution against the convolution sums written out."""

from __future__ import annotations

import torch

from ssmzoo.modules import fft_conv, ssm_convolution

F64 = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_fft_conv_is_the_causal_convolution_sum():
    u, k = rand(2, 3, 9), rand(3, 9, seed=1)
    want = torch.stack([sum(k[:, s] * u[..., t - s] for s in range(t + 1)) for t in range(9)], -1)
    torch.testing.assert_close(fft_conv(u, k), want)


def test_ssm_convolution_runs_the_second_half_anticausally_within_each_length():
    x, k = rand(2, 6, 3), rand(2, 3, 6, seed=1)  # one causal, one anti-causal kernel
    lengths = torch.tensor([6, 4])
    y = ssm_convolution(x, k, channels=1, lengths=lengths)  # (B, 1, H, L)
    for b, n in enumerate(lengths.tolist()):
        for t in range(n):
            causal = sum(k[0, :, s] * x[b, t - s] for s in range(t + 1))
            anti = sum(k[1, :, s] * x[b, t + s] for s in range(n - t))  # never past the sequence's end
            torch.testing.assert_close(y[b, 0, :, t], causal + anti)
