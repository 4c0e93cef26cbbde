"""The Cauchy kernel in plain PyTorch, walking L in chunks in forward *and* backward: O(N · chunk)
memory per row.

Gradients (torch's convention, g the upstream gradient, h = conj(g)):
    S1_n = Σ_l h_l / (z_l - w_n) + conj(h_l) / (conj(z_l) - w_n),   grad_v = conj(S1)
    S2_n = Σ_l h_l / (z_l - w_n)² + conj(h_l) / (conj(z_l) - w_n)², grad_w = conj(v S2)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .inputs import CauchyInputs
from .reference import cauchy_reference


def _grad_sums(w: Tensor, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """(S1, S2) (M, N) of the module docstring for one chunk of positions: h (M, Lc), z (Lc,)."""
    r1 = 1 / (z - w.unsqueeze(-1))  # (M, N, Lc)
    r2 = 1 / (z.conj() - w.unsqueeze(-1))
    t1, t2 = h.unsqueeze(-2) * r1, h.conj().unsqueeze(-2) * r2
    return (t1 + t2).sum(-1), (t1 * r1 + t2 * r2).sum(-1)


class _ChunkedCauchy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: Tensor, z: Tensor, w: Tensor, chunk: int) -> Tensor:
        out = torch.empty(v.shape[0], z.shape[0], dtype=v.dtype, device=v.device)
        for start in range(0, z.shape[0], chunk):
            out[:, start : start + chunk] = cauchy_reference(CauchyInputs(v, z[start : start + chunk], w))
        ctx.save_for_backward(v, z, w)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        v, z, w = ctx.saved_tensors
        s1, s2 = torch.zeros_like(v), torch.zeros_like(v)
        for start in range(0, z.shape[0], ctx.chunk):
            a, b = _grad_sums(w, z[start : start + ctx.chunk], grad[:, start : start + ctx.chunk].conj())
            s1 += a
            s2 += b
        return s1.conj(), None, (v * s2).conj(), None


def cauchy_chunked(x: CauchyInputs, chunk: int = 256) -> Tensor:
    """v, w (M, N), z (L,) -> (M, L) in O(M · N · chunk) memory, forward and backward."""
    return _ChunkedCauchy.apply(x.v, x.z, x.w, chunk)
