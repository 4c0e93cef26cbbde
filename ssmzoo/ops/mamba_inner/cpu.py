"""The fused Mamba inner block on CPU (csrc/mamba_cpu.cpp): conv and scan kernels that read and write
the layer's channels-last layout directly (no transposes, no concatenations; the gradient of xz is
written in place, both halves), with x_proj as a matmul in between; the scan applies dt_proj itself.
Packed documents: both kernels take the documents' ids and restart at every document start."""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..extension import load_cpu_extension
from ..segments import Segments
from ..selective_scan.autograd import CHUNK
from .inputs import MambaInnerInputs, State

MAX_STATE = 256  # the C++ kernels' stack arrays for the state


def extension() -> ModuleType | None:
    return load_cpu_extension("ssmzoo_mamba_cpu", "mamba_cpu.cpp", headers=("cpu_math.h", "cpu_gemm.h"))


def available() -> bool:
    return extension() is not None


def final_conv_state(x: Tensor, conv_state: Tensor | None, width: int, segments: Segments | None) -> Tensor:
    """The last W-1 inputs of the conv, (batch or num_docs, D, W-1), from [conv_state, x] (per document with
    ``segments``); x (batch, length, D) channels last."""
    batch, length, d = x.shape
    w = width - 1
    if segments is None:
        x = rearrange(x, "b l d -> b d l")
        if w == 0:
            return x.new_zeros(batch, d, 0)
        prev = conv_state if conv_state is not None else x.new_zeros(batch, d, w)
        return torch.cat([prev.to(x.dtype), x[..., -w:]], -1)[..., -w:]
    if w == 0:
        return x.new_zeros(segments.num_docs, d, 0)
    # Slot i of document k holds its token n_k - w + i, or entry w + (n_k - w + i) of its conv state when negative.
    rel = segments.doc_lengths[:, None] - w + torch.arange(w, device=x.device)  # (num_docs, w)
    first = segments.cu_seqlens[:-1, None]
    tokens = x.reshape(batch * length, d)[(first + rel).clamp(min=0)]  # (num_docs, w, D)
    if conv_state is None:
        before = torch.zeros_like(tokens)
    else:
        before = rearrange(conv_state.to(x.dtype).gather(2, (w + rel).clamp(max=w - 1)[:, None, :].expand(-1, d, -1)),
                           "k d w -> k w d")
    return rearrange(torch.where((rel >= 0)[..., None], tokens, before), "k w d -> k d w")


class _FusedInner(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ext, xz, conv_w, conv_b, xproj_w, dt_w, dt_b, A, Dskip, conv_state, h0, chunk, doc):
        empty = xz.new_empty(0)
        opt = lambda t: empty if t is None else t  # noqa: E731
        docs = doc if doc is not None else empty.long()
        rank = dt_w.shape[1]
        u = ext.conv_forward(xz, conv_w, opt(conv_b), opt(conv_state), docs)
        x_dbl = F.linear(u, xproj_w)  # (batch, length, R + 2N)
        # the scan applies dt_proj (R -> D) to x_dbl's first R columns itself: δ is never materialised
        y, h_final, ckpt = ext.scan_forward(u, dt_w, dt_b, A, x_dbl, rank, xz, Dskip, opt(h0), chunk, docs)
        ctx.save_for_backward(xz, conv_w, conv_b, xproj_w, dt_w, dt_b, A, Dskip, conv_state, h0, u, x_dbl, ckpt, doc)
        ctx.ext, ctx.chunk = ext, chunk
        return y, h_final

    @staticmethod
    def backward(ctx, dy, dh_final):
        xz, conv_w, conv_b, xproj_w, dt_w, dt_b, A, Dskip, conv_state, h0, u, x_dbl, ckpt, doc = ctx.saved_tensors
        ext, rank = ctx.ext, dt_w.shape[1]
        batch, length, d_inner = u.shape
        empty = xz.new_empty(0)
        opt = lambda t: empty if t is None else t  # noqa: E731
        docs = doc if doc is not None else empty.long()
        states = batch if doc is None else int(doc[-1, -1]) + 1
        dy = dy.contiguous() if dy is not None else torch.zeros_like(u)
        dh_final = dh_final.contiguous() if dh_final is not None else u.new_zeros(states, d_inner, A.shape[1])
        dxz = torch.empty_like(xz)  # the scan writes the z half, the conv the x half
        du, ddelta, dA, dD, dbias, dB, dC, dh0 = ext.scan_backward(u, dt_w, dt_b, A, x_dbl, rank, xz, Dskip, opt(h0),
                                                                   ckpt, dy, dh_final, ctx.chunk, dxz, docs)
        flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
        d_dt = torch.matmul(ddelta, dt_w)  # (batch, length, R)
        d_dt_w = flat(ddelta).t() @ flat(x_dbl[..., :rank])
        dx_dbl = torch.cat([d_dt, dB, dC], -1)
        d_xproj_w = flat(dx_dbl).t() @ flat(u)
        flat(du).addmm_(flat(dx_dbl), xproj_w)  # the gradient of u through x_proj joins the scan's
        d_conv_w, d_conv_b, d_state = ext.conv_backward(xz, conv_w, opt(conv_b), opt(conv_state), du, dxz, docs)
        return (None, dxz, d_conv_w, None if conv_b is None else d_conv_b, d_xproj_w, d_dt_w, dbias, dA, dD,
                None if conv_state is None else d_state.view_as(conv_state), dh0 if ctx.needs_input_grad[10] else None,
                None, None)


def mamba_inner_cpu(x: MambaInnerInputs, *, output_final_state: bool = False,
                    chunk: int = CHUNK) -> Tensor | tuple[Tensor, State]:
    """The fused C++ form (csrc/mamba_cpu.cpp); computes in the inputs' dtype (float32 or float64)."""
    w = x.weights
    conv_state, ssm_state = x.initial_state if x.initial_state is not None else (None, None)
    dtype = x.xz.dtype
    cast = lambda t: None if t is None else t.to(dtype).contiguous()  # noqa: E731
    doc = None if x.segments is None else x.segments.doc.contiguous()
    y, h_final = _FusedInner.apply(extension(), cast(x.xz), cast(w.conv_weight), cast(w.conv_bias),
                                   cast(w.x_proj_weight), cast(w.dt_proj_weight), cast(w.dt_proj_bias),
                                   cast(-torch.exp(w.A_log)), cast(w.D), cast(conv_state), cast(ssm_state), chunk, doc)
    if not output_final_state:
        return y
    d = w.conv_weight.shape[0]
    return y, (final_conv_state(x.xz[..., :d], conv_state, w.conv_weight.shape[1], x.segments), h_final)
