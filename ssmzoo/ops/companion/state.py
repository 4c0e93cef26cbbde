"""The final state of a companion SSM after reading a sequence, without an O(d ℓ) scan."""

from __future__ import annotations

import torch
from torch import Tensor


def companion_final_state(a: Tensor, b: Tensor, u: Tensor, w: Tensor, state: Tensor | None) -> Tensor:
    """x_{L−1} (..., d) of x_t = A x_{t−1} + b u_t read over u (..., L) from x_{−1} = ``state``.

    Only the last state coordinate w_t = (x_t)_{d−1} feeds back through a, so with
    ``w`` (..., L) that coordinate's sequence (itself one companion convolution, c = e_d):
        x_{L−1}[i] = (S^L x_{−1})_i + Σ_{m ≤ min(i, L−1)} a_{i−m} w_{L−2−m} + b_{i−m} u_{L−1−m},
    with w_{−1} = (x_{−1})_{d−1}: two length-d causal convolutions instead of an O(d ℓ) scan.

    It reads only the last d + 1 positions of u and w: without a carried-in state, and for L > d, their last
    d + 1 values give the same state as the whole sequences."""
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
