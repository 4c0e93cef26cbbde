"""The C++ CPU backend (csrc/selective_scan_cpu.cpp) as an autograd function.

The kernel wants B and C with N contiguous, (batch, G, L, N), so that its inner loops over the state
vectorise; this module transposes them (small: no D axis) and sums the per-batch / per-slice
partial gradients the kernel writes to stay race-free.
"""

from __future__ import annotations

import math
from types import ModuleType

import torch
from einops import rearrange
from torch import Tensor

from ..extension import load_cpu_extension

# States are checkpointed every CHUNK steps for the backward pass: memory (batch, D, L/CHUNK, N).
CHUNK = 64
MAX_STATE = 256


def extension() -> ModuleType | None:
    return load_cpu_extension("ssmzoo_selective_scan_cpu", "selective_scan_cpu.cpp")


def _kernel_layout(BC: Tensor) -> tuple[Tensor, int]:
    """(tensor in the kernel's layout, groups): groups 0 means time-invariant (D, N)."""
    if BC.dim() == 2:
        return BC.contiguous(), 0
    if BC.dim() == 3:
        return rearrange(BC, "b n l -> b 1 l n").contiguous(), 1
    return rearrange(BC, "b g n l -> b g l n").contiguous(), BC.shape[1]


def _user_layout(grad: Tensor, like: Tensor, groups: int) -> Tensor:
    """Sum the kernel's partial gradient of B or C and bring it back to the caller's layout."""
    if groups == 0:
        return grad.sum(0)  # (batch, D, N) -> (D, N)
    grad = grad.sum(0)  # (slices, batch, G, L, N) -> (batch, G, L, N)
    if like.dim() == 3:
        return rearrange(grad, "b 1 l n -> b n l")
    return rearrange(grad, "b g l n -> b g n l")


class SelectiveScanCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
        ext = extension()
        Bk, groups = _kernel_layout(B)
        Ck, _ = _kernel_layout(C)
        batch, d_inner, _ = u.shape
        d_state = A.shape[1]
        Dv = D if D is not None else u.new_zeros(d_inner)
        bias = delta_bias if delta_bias is not None else u.new_zeros(d_inner)
        zk = z.contiguous() if z is not None else u.new_empty(0)
        h0 = initial_state.contiguous() if initial_state is not None else u.new_zeros(batch, d_inner, d_state)
        u, delta, A = u.contiguous(), delta.contiguous(), A.contiguous()
        y, final_state, checkpoints = ext.forward(u, delta, A, Bk, Ck, Dv.contiguous(), zk, bias.contiguous(), h0,
                                                  delta_softplus, groups, CHUNK)
        ctx.save_for_backward(u, delta, A, Bk, Ck, Dv, zk, bias, checkpoints)
        ctx.groups, ctx.softplus, ctx.B, ctx.C = groups, delta_softplus, B.detach(), C.detach()
        ctx.has = (D is not None, z is not None, delta_bias is not None, initial_state is not None)
        return y, final_state

    @staticmethod
    def backward(ctx, dy, dh_final):
        u, delta, A, Bk, Ck, Dv, zk, bias, checkpoints = ctx.saved_tensors
        dy = dy.contiguous() if dy is not None else torch.zeros_like(u)
        dh_final = dh_final.contiguous() if dh_final is not None else checkpoints.new_zeros(
            u.shape[0], u.shape[1], A.shape[1])
        slices = math.ceil(4 * torch.get_num_threads() / u.shape[0])
        du, ddelta, dz, dA, dB, dC, dD, dbias, dh0 = extension().backward(
            u, delta, A, Bk, Ck, Dv, zk, bias, checkpoints, dy, dh_final, ctx.softplus, ctx.groups, CHUNK, slices)
        has_D, has_z, has_bias, has_h0 = ctx.has
        return (du, ddelta, dA.sum(0), _user_layout(dB, ctx.B, ctx.groups), _user_layout(dC, ctx.C, ctx.groups),
                dD.sum(0) if has_D else None, dz if has_z else None, dbias.sum(0) if has_bias else None, None,
                dh0 if has_h0 else None)


def selective_scan_cpu(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The selective scan by the C++ kernel; computes in float32 (float64 for float64 inputs)."""
    if A.shape[1] > MAX_STATE:
        raise ValueError(f"selective_scan: the cpp backend supports d_state <= {MAX_STATE}, got {A.shape[1]}")
    dtype = torch.promote_types(u.dtype, torch.float32)

    def cast(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(dtype)

    y, final_state = SelectiveScanCpu.apply(cast(u), cast(delta), cast(A), cast(B), cast(C), cast(D), cast(z),
                                            cast(delta_bias), bool(delta_softplus), cast(initial_state))
    y = y.to(u.dtype)
    return (y, final_state.to(u.dtype)) if return_final_state else y


def available() -> bool:
    return extension() is not None
