"""The selective scan of Mamba, sequentially: the oracle. Gu & Dao, "Mamba: Linear-Time Sequence
Modeling with Selective State Spaces" (arXiv:2312.00752), Algorithm 2.

Per batch element b, channel d and state index n, with Δ_t = softplus(δ_t + bias) (or δ_t + bias):
    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t          (zero-order hold for A, Euler for B; eq. 4)
    y_t = C_t · h_t + D u_t,   then y_t *= silu(z_t)
With packed documents (``segments``) each document runs alone: h_{-1} is that document's initial
state (or zero) at its first token. Every fast backend is tested against this function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor

from .inputs import ScanInputs


def expand_input_matrix(BC: Tensor, d_inner: int, length: int) -> Tensor:
    """B or C in any accepted layout as a tensor broadcastable to (batch, D, N, L).

    (D, N): time-invariant per channel; (batch, N, L): shared by all channels;
    (batch, G, N, L): channel d uses group d // (D / G) (contiguous groups, as in mamba-ssm)."""
    if BC.dim() == 2:
        return BC[None, :, :, None].expand(-1, -1, -1, length)
    if BC.dim() == 3:
        return BC[:, None]
    groups = BC.shape[1]
    return repeat(BC, "b g n l -> b (g h) n l", h=d_inner // groups)


def _recurrence(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """The scan over u, delta (batch, D, T) from h (batch, D, N), with B, C broadcastable to
    (batch, D, N, T): y (batch, D, T) without the skip and gate, and the last state."""
    ys = []
    for t in range(u.shape[-1]):
        dt = delta[:, :, t, None]  # (batch, D, 1)
        h = torch.exp(dt * A) * h + dt * B[..., t] * u[:, :, t, None]
        ys.append((h * C[..., t]).sum(-1))
    return torch.stack(ys, dim=-1), h


def selective_scan_reference(x: ScanInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """y (batch, D, L) [, final states (batch or num_docs, D, N)] of the scan described by ``x``.

    Computes in float32 (or float64 for float64 inputs) and returns u's dtype."""
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, segments = x
    in_dtype = u.dtype
    dtype = torch.promote_types(u.dtype, torch.float32)
    batch, d_inner, length = u.shape
    u, delta, A = u.to(dtype), delta.to(dtype), A.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B = expand_input_matrix(B.to(dtype), d_inner, length)
    C = expand_input_matrix(C.to(dtype), d_inner, length)

    def entering(first: int, count: int) -> Tensor:  # states ``first .. first + count - 1`` before the scan
        if initial_state is None:
            return u.new_zeros(count, d_inner, A.shape[1])
        return initial_state[first : first + count].to(dtype)

    if segments is None:
        y, h = _recurrence(u, delta, A, B, C, entering(0, batch))
        finals = [h]
    else:  # every document alone, from its own initial state
        rows: list[list[Tensor]] = [[] for _ in range(batch)]
        finals = []
        for k, (r, t0, t1) in enumerate(segments.spans):
            y_doc, h = _recurrence(u[r : r + 1, :, t0:t1], delta[r : r + 1, :, t0:t1], A, _rows(B, r)[..., t0:t1],
                                   _rows(C, r)[..., t0:t1], entering(k, 1))
            rows[r].append(y_doc)
            finals.append(h)
        y = torch.cat([torch.cat(parts, dim=-1) for parts in rows])
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(in_dtype)
    return (y, torch.cat(finals).to(in_dtype)) if output_final_state else y


def _rows(BC: Tensor, row: int) -> Tensor:
    """Row ``row`` of an expanded B or C (a leading size of 1 is shared by every row)."""
    return BC if BC.shape[0] == 1 else BC[row : row + 1]
