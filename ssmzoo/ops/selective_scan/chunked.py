"""A chunked selective scan in plain PyTorch, for devices without our kernels.

Within a chunk of T steps the linear recurrence h_t = a_t h_{t-1} + x_t (a_t = exp(Δ_t A),
x_t = Δ_t B_t u_t) is solved by a Hillis-Steele associative scan on the pairs (a, x), whose operator
(a, x) ∘ (a', x') = (a a', a' x + x') needs only products of decays (all in (0, 1]: stable, no
exp of positive sums), in log2(T) elementwise steps. Chunks are chained through their final state
and each is recomputed in the backward pass (activation checkpointing), so memory is
O(batch · D · N · T) for one chunk plus the (batch, D, N) chunk states, never (batch, D, N, L).

Packed documents reset the state at every document start t: a_t = 0 there (nothing of the previous
document carries over) and the document's initial state enters as part of that step's input,
x_t += exp(Δ_t A) h0_doc; a document's final state is h at its last token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .inputs import ScanInputs
from .reference import expand_input_matrix

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


def scan_chunk(h0: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, starts: Tensor | None = None,
               entering: Tensor | None = None, ends: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """One chunk: h0 (batch, D, N) the state before it; u, delta (batch, D, T); B, C in the op's layouts
    sliced to T steps. Packed documents: ``starts`` (batch, T) bool marks document starts, ``entering``
    (batch, D, N, T) the initial state entering there (zero elsewhere) or None for zeros, ``ends``
    (batch, T) bool the documents' last tokens.

    Returns y (batch, D, T) without the D skip and gate, the final state (batch, D, N) and, with
    ``ends``, the states at the ends (ends.sum(), D, N) in row-major order (else None)."""
    d_inner, T = u.shape[1], u.shape[-1]
    a = torch.exp(delta[:, :, None, :] * A[..., None])  # (batch, D, N, T)
    x = (delta * u)[:, :, None, :] * expand_input_matrix(B, d_inner, T)  # Δ_t B_t u_t
    if starts is not None:
        if entering is not None:
            x = x + a * entering
        a = a.masked_fill(starts[:, None, None, :], 0.0)
    # The state before the chunk enters as part of the first step's input: h_0 = a_0 h0 + x_0.
    x = torch.cat([x[..., :1] + a[..., :1] * h0[..., None], x[..., 1:]], dim=-1)
    h = associative_scan(a, x)
    y = torch.einsum("bdnt,bdnt->bdt", h, expand_input_matrix(C, d_inner, T).expand_as(h))
    return y, h[..., -1], (None if ends is None else rearrange(h, "b d n t -> b t d n")[ends])


def selective_scan_chunked(
    x: ScanInputs, *, output_final_state: bool = False, chunk: int = CHUNK
) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`selective_scan_reference`; computes in float32 (float64 for float64)."""
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, segments = x
    in_dtype = u.dtype
    dtype = torch.promote_types(u.dtype, torch.float32)
    batch, d_inner, length = u.shape
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h0 = None if initial_state is None else initial_state.to(dtype)
    entering = None
    if segments is not None:
        h = u.new_zeros(batch, d_inner, A.shape[1])  # every row starts a document: this never enters
        if h0 is not None:  # (batch, D, N, L): each document's initial state at its first token
            entering = rearrange(h0[segments.doc], "b l d n -> b d n l") * segments.starts[:, None, None, :]
    else:
        h = u.new_zeros(batch, d_inner, A.shape[1]) if h0 is None else h0
    recompute = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, initial_state))
    ys, finals, owners = [], [], []
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        Bc = B if B.dim() == 2 else B[..., start:stop]
        Cc = C if C.dim() == 2 else C[..., start:stop]
        args: tuple = (h, u[..., start:stop], delta[..., start:stop], A, Bc, Cc)
        if segments is not None:
            ends = segments.ends[:, start:stop]
            args += (segments.starts[:, start:stop], None if entering is None else entering[..., start:stop], ends)
            owners.append(segments.doc[:, start:stop][ends])
        y, h, at_ends = checkpoint(scan_chunk, *args, use_reentrant=False) if recompute else scan_chunk(*args)
        ys.append(y)
        finals.append(at_ends)
    y = torch.cat(ys, dim=-1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(in_dtype)
    if not output_final_state:
        return y
    if segments is not None:  # each document's state at its last token, in document order
        order = torch.cat(owners)
        h = torch.cat(finals).index_select(0, torch.argsort(order))
    return y, h.to(in_dtype)
