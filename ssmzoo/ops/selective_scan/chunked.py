"""A chunked selective scan in plain PyTorch, for devices without our kernels.

Within a chunk of T steps the linear recurrence h_t = a_t h_{t-1} + x_t (a_t = exp(Δ_t A),
x_t = Δ_t B_t u_t) is solved by a Hillis-Steele associative scan on the pairs (a, x), whose operator
(a, x) ∘ (a', x') = (a a', a' x + x') needs only products of decays (all in (0, 1]: stable, no
exp of positive sums), in log2(T) elementwise steps. Chunks are chained through their final state
and each is recomputed in the backward pass (activation checkpointing), so memory is
O(batch · D · N · T) for one chunk plus the (batch, D, N) chunk states, never (batch, D, N, L).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .reference import ScanInputs, expand_input_matrix

CHUNK = 16


def associative_scan(a: Tensor, x: Tensor) -> Tensor:
    """h along the last dim with h_t = a_t h_{t-1} + x_t and h_{-1} = 0 (Hillis-Steele, log2(T) steps)."""
    step = 1
    while step < x.shape[-1]:
        # Both updates read the previous a: h_t <- h_t + a_t h_{t-k}, then a_t <- a_t a_{t-k}.
        x = torch.cat([x[..., :step], torch.addcmul(x[..., step:], a[..., step:], x[..., :-step])], dim=-1)
        a = torch.cat([a[..., :step], a[..., step:] * a[..., :-step]], dim=-1)
        step *= 2
    return x


def scan_chunk(h0: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk: h0 (batch, D, N); u, delta (batch, D, T); B, C in the op's layouts sliced to T steps.

    Returns y (batch, D, T) without the D skip and gate, and the final state (batch, D, N)."""
    d_inner, T = u.shape[1], u.shape[-1]
    a = torch.exp(delta[:, :, None, :] * A[..., None])  # (batch, D, N, T)
    x = (delta * u)[:, :, None, :] * expand_input_matrix(B, d_inner, T)  # Δ_t B_t u_t
    # The initial state enters as part of the first step's input: h_0 = a_0 h0 + x_0.
    x = torch.cat([x[..., :1] + a[..., :1] * h0[..., None], x[..., 1:]], dim=-1)
    h = associative_scan(a, x)
    return torch.einsum("bdnt,bdnt->bdt", h, expand_input_matrix(C, d_inner, T).expand_as(h)), h[..., -1]


def selective_scan_chunked(
    x: ScanInputs, *, output_final_state: bool = False, chunk: int = CHUNK
) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`selective_scan_reference`; computes in float32 (float64 for float64)."""
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state = x
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
    return (y, h.to(in_dtype)) if output_final_state else y
