"""fft_conv and ssm_convolution against the convolution sums written out."""

from __future__ import annotations

import pytest
import torch

from ssmzoo.modules import fft_conv, ssm_convolution
from ssmzoo.modules.fft_conv import fft_conv_reference, two_sided_kernel

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


@pytest.mark.parametrize("u_shape, k_shape", [
    ((2, 1, 3, 7), (2, 3, 7)),      # an SSM layer's broadcast: (B, 1, H, L) with (C, H, L)
    ((2, 1, 3, 7), (2, 3, 14)),     # a two-sided kernel
    ((3, 5), (5,)),                 # one kernel for every row
    ((1, 1), (1, 1)),               # L = 1
    ((2, 4, 1, 6), (4, 1, 6)),
])
def test_fft_conv_gradients_equal_autograds_and_the_numerical_ones(u_shape, k_shape):
    u = rand(*u_shape).requires_grad_()
    k = rand(*k_shape, seed=1).requires_grad_()
    y, y_ref = fft_conv(u, k), fft_conv_reference(u, k)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    g = rand(*y.shape, seed=2)
    got = torch.autograd.grad(y, (u, k), g)
    want = torch.autograd.grad(y_ref, (u, k), g)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(fft_conv, (u, k))
    # only one input needing a gradient
    (gu,) = torch.autograd.grad(fft_conv(u, k.detach()), (u,), g)
    torch.testing.assert_close(gu, want[0], rtol=1e-10, atol=1e-10)


def test_fft_conv_float32_and_a_wrong_kernel_length():
    u, k = rand(2, 3, 50).float(), rand(3, 50, seed=1).float()
    torch.testing.assert_close(fft_conv(u, k), fft_conv_reference(u.double(), k.double()).float(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="k must have length"):
        fft_conv(u, k[..., :7])


def test_a_two_sided_kernel_is_the_sum_of_a_causal_and_an_anticausal_convolution():
    u, kc, ka = rand(2, 3, 8), rand(3, 8, seed=1), rand(3, 8, seed=2)
    want = fft_conv_reference(u, kc) + fft_conv_reference(u.flip(-1), ka).flip(-1)
    torch.testing.assert_close(fft_conv(u, two_sided_kernel(kc, ka)), want)


def test_ssm_convolution_ignores_whatever_sits_in_the_padding():
    x, k = rand(2, 6, 3), rand(2, 3, 6, seed=1)
    lengths = torch.tensor([6, 3])
    dirty = x.clone()
    dirty[1, 3:] = float("nan")
    y, y_dirty = ssm_convolution(x, k, 1, lengths), ssm_convolution(dirty, k, 1, lengths)
    torch.testing.assert_close(y_dirty[1, ..., :3], y[1, ..., :3])
    assert torch.isfinite(y_dirty[1, ..., :3]).all()
