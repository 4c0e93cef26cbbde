"""The Vandermonde kernel in plain PyTorch, walking L in chunks in forward *and* backward, so peak
memory is O(N · chunk) per row instead of O(N · L)."""

from __future__ import annotations

import torch
from torch import Tensor

from .inputs import TransposeInputs, VandermondeInputs


class _ChunkedVandermonde(torch.autograd.Function):
    # For a real loss with upstream gradient g_l, and E_nl = exp(w_n l):
    #   grad_v = 2 sum_l g_l conj(E_nl);  grad_w = 2 conj(v_n) sum_l g_l l conj(E_nl)
    # (torch's convention for complex leaves: grad = dL/dRe + i dL/dIm).
    @staticmethod
    def forward(ctx, v: Tensor, log_z: Tensor, length: int, chunk: int) -> Tensor:
        shape = torch.broadcast_shapes(v.shape, log_z.shape)
        vb, wb = v.expand(shape), log_z.expand(shape)
        out = torch.empty(*shape[:-1], length, dtype=v.real.dtype, device=v.device)
        for start in range(0, length, chunk):
            pos = torch.arange(start, min(start + chunk, length), device=v.device, dtype=v.real.dtype)
            powers = torch.exp(wb.unsqueeze(-1) * pos)
            out[..., start : start + chunk] = 2 * torch.einsum("...n,...nl->...l", vb, powers).real
        ctx.save_for_backward(v, log_z)
        ctx.length, ctx.chunk = length, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        v, log_z = ctx.saved_tensors
        shape = torch.broadcast_shapes(v.shape, log_z.shape)
        wb = log_z.expand(shape)
        g = grad_out.to(v.dtype)
        acc_v = torch.zeros(shape, dtype=v.dtype, device=v.device)
        acc_w = torch.zeros(shape, dtype=v.dtype, device=v.device)
        for start in range(0, ctx.length, ctx.chunk):
            pos = torch.arange(start, min(start + ctx.chunk, ctx.length), device=v.device, dtype=v.real.dtype)
            conj_powers = torch.exp(wb.unsqueeze(-1) * pos).conj()
            gc = g[..., start : start + ctx.chunk]
            acc_v += torch.einsum("...l,...nl->...n", gc, conj_powers)
            acc_w += torch.einsum("...l,...nl->...n", gc * pos, conj_powers)
        grad_v = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_v = (2 * acc_v).sum_to_size(v.shape)
        if ctx.needs_input_grad[1]:
            grad_w = (2 * v.expand(shape).conj() * acc_w).sum_to_size(log_z.shape)
        return grad_v, grad_w, None, None


def vandermonde_chunked(x: VandermondeInputs, chunk: int = 1024) -> Tensor:
    """Same as :func:`vandermonde_reference`, in O(N · chunk) memory per row, forward and backward."""
    return _ChunkedVandermonde.apply(x.v, x.log_z, x.length, chunk)


def vandermonde_transpose_chunked(x: TransposeInputs, chunk: int = 1024) -> Tensor:
    """s[..., n] = sum_l u[..., l] z_n^(L-1-l): the state a diagonal SSM holds after reading u.

    u (..., L) real or complex; log_z (..., N) complex (broadcast against u's leading dims)."""
    u, log_z = x
    length = u.shape[-1]
    u = u.to(log_z.dtype)
    out = None
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        expo = torch.arange(length - 1 - start, length - 1 - stop, -1, device=u.device, dtype=log_z.real.dtype)
        part = torch.einsum("...l,...nl->...n", u[..., start:stop], torch.exp(log_z.unsqueeze(-1) * expo))
        out = part if out is None else out + part
    return out
