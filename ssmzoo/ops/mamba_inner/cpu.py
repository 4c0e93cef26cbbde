"""The fused Mamba inner block on CPU (csrc/mamba_cpu.cpp): conv and scan kernels that read and write
the layer's channels-last layout directly (no transposes, no concatenations; the gradient of xz is
written in place, both halves), with x_proj as a matmul in between; the scan applies dt_proj itself."""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..extension import load_cpu_extension
from ..selective_scan.kernel import CHUNK
from .reference import MambaInnerInputs, State

MAX_STATE = 256  # the C++ kernels' stack arrays for the state


def extension() -> ModuleType | None:
    return load_cpu_extension("ssmzoo_mamba_cpu", "mamba_cpu.cpp", headers=("cpu_math.h", "cpu_gemm.h"))


def available() -> bool:
    return extension() is not None


def _final_conv_state(xz: Tensor, conv_state: Tensor | None, width: int) -> Tensor:
    """The last W-1 inputs of the conv, (batch, D, W-1), from [conv_state, x]."""
    batch, _, two_d = xz.shape
    d = two_d // 2
    x = rearrange(xz[..., :d], "b l d -> b d l")
    if width == 1:
        return x.new_zeros(batch, d, 0)
    prev = conv_state if conv_state is not None else x.new_zeros(batch, d, width - 1)
    return torch.cat([prev.to(x.dtype), x[..., -(width - 1):]], -1)[..., -(width - 1):]


class _FusedInner(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ext, xz, conv_w, conv_b, xproj_w, dt_w, dt_b, A, Dskip, conv_state, h0, chunk):
        empty = xz.new_empty(0)
        rank = dt_w.shape[1]
        u = ext.conv_forward(xz, conv_w, empty if conv_b is None else conv_b, empty if conv_state is None else conv_state)
        x_dbl = F.linear(u, xproj_w)  # (batch, length, R + 2N)
        # the scan applies dt_proj (R -> D) to x_dbl's first R columns itself: δ is never materialised
        y, h_final, ckpt = ext.scan_forward(u, dt_w, dt_b, A, x_dbl, rank, xz, Dskip, empty if h0 is None else h0, chunk)
        ctx.save_for_backward(xz, conv_w, conv_b, xproj_w, dt_w, dt_b, A, Dskip, conv_state, u, x_dbl, ckpt)
        ctx.ext, ctx.chunk = ext, chunk
        return y, h_final

    @staticmethod
    def backward(ctx, dy, dh_final):
        xz, conv_w, conv_b, xproj_w, dt_w, dt_b, A, Dskip, conv_state, u, x_dbl, ckpt = ctx.saved_tensors
        ext, rank = ctx.ext, dt_w.shape[1]
        batch, length, d_inner = u.shape
        empty = xz.new_empty(0)
        dy = dy.contiguous() if dy is not None else torch.zeros_like(u)
        dh_final = dh_final.contiguous() if dh_final is not None else u.new_zeros(batch, d_inner, A.shape[1])
        dxz = torch.empty_like(xz)  # the scan writes the z half, the conv the x half
        du, ddelta, dA, dD, dbias, dB, dC, dh0 = ext.scan_backward(u, dt_w, dt_b, A, x_dbl, rank, xz, Dskip, ckpt, dy,
                                                                   dh_final, ctx.chunk, dxz)
        flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
        d_dt = torch.matmul(ddelta, dt_w)  # (batch, length, R)
        d_dt_w = flat(ddelta).t() @ flat(x_dbl[..., :rank])
        dx_dbl = torch.cat([d_dt, dB, dC], -1)
        d_xproj_w = flat(dx_dbl).t() @ flat(u)
        flat(du).addmm_(flat(dx_dbl), xproj_w)  # the gradient of u through x_proj joins the scan's
        d_conv_w, d_conv_b, d_state = ext.conv_backward(xz, conv_w, empty if conv_b is None else conv_b,
                                                        empty if conv_state is None else conv_state, du, dxz)
        return (None, dxz, d_conv_w, None if conv_b is None else d_conv_b, d_xproj_w, d_dt_w, dbias, dA, dD,
                None if conv_state is None else d_state.view_as(conv_state), dh0 if ctx.needs_input_grad[10] else None, None)


def mamba_inner_cpp(x: MambaInnerInputs, *, output_final_state: bool = False,
                    chunk: int = CHUNK) -> Tensor | tuple[Tensor, State]:
    """The fused C++ form (csrc/mamba_cpu.cpp); computes in the inputs' dtype (float32 or float64)."""
    w = x.weights
    dtype = x.xz.dtype
    cast = lambda t: None if t is None else t.to(dtype).contiguous()  # noqa: E731
    y, h_final = _FusedInner.apply(extension(), cast(x.xz), cast(w.conv_weight), cast(w.conv_bias),
                                   cast(w.x_proj_weight), cast(w.dt_proj_weight), cast(w.dt_proj_bias),
                                   cast(-torch.exp(w.A_log)), cast(w.D), cast(x.conv_state), cast(x.ssm_state), chunk)
    if not output_final_state:
        return y
    return y, (_final_conv_state(x.xz, x.conv_state, w.conv_weight.shape[1]), h_final)
