"""A chunked selective scan in plain PyTorch, for devices without our kernels.

Within a chunk of T steps the scan is solved in closed form (as in Mamba-2's SSD, Dao & Gu 2024):
    h_t = exp(Σ_{r<=t} Δ_r A) h_0 + Σ_{s<=t} exp(Σ_{s<r<=t} Δ_r A) Δ_s B_s u_s
with the segment sums Σ_{s<r<=t} taken by a masked cumulative sum (never as a difference of two
cumulative sums, which cancels catastrophically in float32). Chunks are chained through their final
state, and each chunk is recomputed in the backward pass (activation checkpointing), so memory is
O(batch · D · N · T²) for one chunk plus the (batch, D, N) chunk states, never (batch, D, N, L).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .reference import expand_input_matrix

CHUNK = 32


def segment_sums(x: Tensor) -> Tensor:
    """(..., T) -> (..., T, T) with [t, s] = Σ_{s<r<=t} x_r for s <= t and -inf above the diagonal."""
    T = x.shape[-1]
    xx = repeat(x, "... t -> ... t s", s=T)
    strictly_lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=-1)
    sums = torch.cumsum(xx.masked_fill(~strictly_lower, 0), dim=-2)
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))
    return sums.masked_fill(~lower, float("-inf"))


def scan_chunk(h0: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk: h0 (batch, D, N); u, delta (batch, D, T); B, C in the op's layouts sliced to T steps.

    Returns y (batch, D, T) without the D skip and gate, and the final state (batch, D, N)."""
    d_inner, T = u.shape[1], u.shape[-1]
    B = expand_input_matrix(B, d_inner, T)
    C = expand_input_matrix(C, d_inner, T)
    dA = delta[:, :, None, :] * A[..., None]  # (batch, D, N, T)
    x = (delta * u)[:, :, None, :] * B  # Δ_s B_s u_s
    h = torch.einsum("bdnts,bdns->bdnt", torch.exp(segment_sums(dA)), x)
    h = h + torch.exp(torch.cumsum(dA, dim=-1)) * h0[..., None]
    return torch.einsum("bdnt,bdnt->bdt", h, C.expand_as(h)), h[..., -1]


def selective_scan_chunked(
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
    chunk: int = CHUNK,
) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`selective_scan_reference`; computes in float32 (float64 for float64)."""
    in_dtype = u.dtype
    dtype = torch.promote_types(u.dtype, torch.float32)
    batch, d_inner, length = u.shape
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(batch, d_inner, A.shape[1]) if initial_state is None else initial_state.to(dtype)
    recompute = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, initial_state))
    ys = []
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        Bc = B if B.dim() == 2 else B[..., start:stop]
        Cc = C if C.dim() == 2 else C[..., start:stop]
        args = (h, u[..., start:stop], delta[..., start:stop], A, Bc, Cc)
        y, h = checkpoint(scan_chunk, *args, use_reentrant=False) if recompute else scan_chunk(*args)
        ys.append(y)
    y = torch.cat(ys, dim=-1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(in_dtype)
    return (y, h.to(in_dtype)) if return_final_state else y
