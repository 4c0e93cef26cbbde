"""The autograd Function around our selective scan kernels (CPU: csrc/selective_scan_cpu.cpp, CUDA:
csrc/selective_scan_cuda.cu, Triton: triton.py); all three share one calling convention
(``ext.forward(...)``, ``ext.backward(...)``). Packed documents go to the CPU kernel's
``forward_documents`` / ``backward_documents`` (the GPU kernels are registered without segments).

The kernels want B and C with N contiguous, (batch, G, L, N), so that their loops over the state
vectorise (CPU) or stay in registers (CUDA); this module transposes them (small: no D axis) and
sums the partial gradients the kernels return (per batch element or per slice of channels on CPU,
already reduced on CUDA, with a leading axis of 1).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Callable

import torch
from einops import rearrange
from torch import Tensor

from .inputs import ScanInputs

# States are checkpointed every CHUNK steps for the backward pass: memory (batch, D, L/CHUNK, N).
CHUNK = 64


def kernel_layout(BC: Tensor) -> tuple[Tensor, int]:
    """(tensor in the kernels' layout, groups): groups 0 means time-invariant (D, N)."""
    if BC.dim() == 2:
        return BC.contiguous(), 0
    if BC.dim() == 3:
        return rearrange(BC, "b n l -> b 1 l n").contiguous(), 1
    return rearrange(BC, "b g n l -> b g l n").contiguous(), BC.shape[1]


def user_layout(grad: Tensor, like: Tensor, groups: int) -> Tensor:
    """Sum a kernel's partial gradient of B or C and bring it back to the caller's layout."""
    grad = grad.sum(0)  # (batch or 1, D, N) -> (D, N); (slices or 1, batch, G, L, N) -> (batch, G, L, N)
    if groups == 0:
        return grad
    if like.dim() == 3:
        return rearrange(grad, "b 1 l n -> b n l")
    return rearrange(grad, "b g l n -> b g n l")


class KernelSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ext, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, chunk, doc):
        Bk, groups = kernel_layout(B)
        Ck, _ = kernel_layout(C)
        batch, d_inner, _ = u.shape
        states = batch if doc is None else int(doc[-1, -1]) + 1
        Dv = D.contiguous() if D is not None else u.new_zeros(d_inner)
        bias = delta_bias.contiguous() if delta_bias is not None else u.new_zeros(d_inner)
        zk = z.contiguous() if z is not None else u.new_empty(0)
        h0 = initial_state.contiguous() if initial_state is not None else u.new_zeros(states, d_inner, A.shape[1])
        u, delta, A = u.contiguous(), delta.contiguous(), A.contiguous()
        args = (u, delta, A, Bk, Ck, Dv, zk, bias, h0, delta_softplus, groups, chunk)
        y, final_state, checkpoints = ext.forward(*args) if doc is None else ext.forward_documents(*args, doc)
        ctx.save_for_backward(u, delta, A, Bk, Ck, Dv, zk, bias, h0, checkpoints, doc)
        ctx.ext, ctx.groups, ctx.softplus, ctx.chunk = ext, groups, delta_softplus, chunk
        ctx.B, ctx.C = B.detach(), C.detach()
        ctx.has = (D is not None, z is not None, delta_bias is not None, initial_state is not None)
        return y, final_state

    @staticmethod
    def backward(ctx, dy, dh_final):
        u, delta, A, Bk, Ck, Dv, zk, bias, h0, checkpoints, doc = ctx.saved_tensors
        dy = dy.contiguous() if dy is not None else torch.zeros_like(u)
        if dh_final is None:
            dh_final = torch.zeros_like(h0)
        # CPU: (batch x slices) work units, a few per thread, for load balance; CUDA ignores it.
        slices = math.ceil(4 * torch.get_num_threads() / u.shape[0])
        if doc is None:
            grads = ctx.ext.backward(u, delta, A, Bk, Ck, Dv, zk, bias, checkpoints, dy, dh_final.contiguous(),
                                     ctx.softplus, ctx.groups, ctx.chunk, slices)
        else:
            grads = ctx.ext.backward_documents(u, delta, A, Bk, Ck, Dv, zk, bias, h0, checkpoints, dy,
                                               dh_final.contiguous(), ctx.softplus, ctx.groups, ctx.chunk, slices, doc)
        du, ddelta, dz, dA, dB, dC, dD, dbias, dh0 = grads
        has_D, has_z, has_bias, has_h0 = ctx.has
        return (None, du, ddelta, dA.sum(0), user_layout(dB, ctx.B, ctx.groups),
                user_layout(dC, ctx.C, ctx.groups), dD.sum(0) if has_D else None, dz if has_z else None,
                dbias.sum(0) if has_bias else None, None, dh0 if has_h0 else None, None, None)


def run_kernel(
    ext: ModuleType, x: ScanInputs, output_final_state: bool, chunk: int = CHUNK
) -> Tensor | tuple[Tensor, Tensor]:
    """The selective scan by a compiled kernel; computes in float32 (float64 for float64 inputs)."""
    dtype = torch.promote_types(x.u.dtype, torch.float32)

    def cast(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(dtype)

    doc = None if x.segments is None else x.segments.doc.contiguous()
    y, final_state = KernelSelectiveScan.apply(ext, cast(x.u), cast(x.delta), cast(x.A), cast(x.B), cast(x.C),
                                               cast(x.D), cast(x.z), cast(x.delta_bias), bool(x.delta_softplus),
                                               cast(x.initial_state), chunk, doc)
    y = y.to(x.u.dtype)
    return (y, final_state.to(x.u.dtype)) if output_final_state else y


def compiled_backend(extension: Callable[[], ModuleType | None]) -> Callable[..., Tensor | tuple[Tensor, Tensor]]:
    """The backend function of a compiled extension (``extension()`` builds or loads it)."""

    def scan(x: ScanInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        return run_kernel(extension(), x, output_final_state)

    return scan
