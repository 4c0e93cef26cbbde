"""Mamba-3's state update, token by token: the oracle every backend is tested against.

Lahoti, Li, Chen, Wang, Bick, Kolter, Dao, Gu, "Mamba-3: Improved Sequence Modeling using State Space
Principles", arXiv 2603.15569 (ICLR 2026). Per head, with a per-token (data-dependent) A_t < 0:

    §3.1, exponential-trapezoidal discretisation (λ_t ∈ (0, 1) interpolates the two endpoints of the
    state-input integral; λ = 1 is Mamba-2's exponential-Euler rule):
        α_t = exp(Δ_t A_t),   β_t = (1 - λ_t) Δ_t α_t,   γ_t = λ_t Δ_t,   λ_t = sigmoid(trap_t)
        h_t = α_t h_{t-1} + β_t x_{t-1} B̄_{t-1}ᵀ + γ_t x_t B̄_tᵀ
        y_t = h_t C̄_t + D x_t
    §3.2, complex state as data-dependent rotary embeddings ("RoPE trick", Proposition "Complex SSM,
    Data-Dependent RoPE Equivalence"): with θ_t = π tanh(angles_t) and the phase φ_t = φ_{t-1} + Δ_t θ_t,
        B̄_t = R(φ_t) (B_t + B_bias),   C̄_t = R(φ_t) (C_t + C_bias)      (rotary.py; φ is kept mod 2π)
    §3.3, MIMO of rank R: x_t is lifted to R inputs x_t^r = x_t ⊙ mimo_x^r, B and C carry R columns, and
        h_t = α_t h_{t-1} + β_t Σ_r x_{t-1}^r B̄_{t-1}^{rᵀ} + γ_t Σ_r x_t^r B̄_t^{rᵀ},   y_t^r = h_t C̄_t^r + D x_t^r,
        y_t = Σ_r mimo_o^r ⊙ (y_t^r ⊙ silu(z_t ⊙ mimo_z^r))      (SISO: y_t ⊙ silu(z_t))
      and without mimo_o the R outputs are returned uncontracted (batch, length, rank, heads, headdim).

h is (headdim, d_state) per head, as mamba-ssm's state; B and C have groups shared by heads/groups heads.
The trapezoid's left endpoint is the previous token's x and rotated B̄, which is why the state carries them
(:class:`~.inputs.Mamba3State`). These are mamba-ssm's semantics (``mamba3_siso_step_ref`` /
``mamba3_MIMO_step_ref`` in its tests, with the MIMO rotary pairing of its kernels); the paper's symbols in
comments. With ``segments`` the state restarts at every document's first token, from that document's
initial state or zero, and the final states are per document.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

from .inputs import Mamba3Inputs, Mamba3State, compute_dtype
from .rotary import rotate

TWO_PI = 2 * math.pi


def as_rank_form(inputs: Mamba3Inputs, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """B, C (batch, length, heads, rank, d_state) with the biases added, x^r = v (batch, length, heads, rank,
    headdim) and the gates silu(z^r) (same shape, or None), in ``dtype``: SISO is rank 1."""
    x, B, C = inputs.x.to(dtype), inputs.B.to(dtype), inputs.C.to(dtype)
    heads = x.shape[2]
    if not inputs.mimo:
        B, C = B[:, :, None], C[:, :, None]
    B = repeat(B, "b l r g n -> b l (g k) r n", k=heads // B.shape[3])
    C = repeat(C, "b l r g n -> b l (g k) r n", k=heads // C.shape[3])
    for bias, name in ((inputs.B_bias, "B"), (inputs.C_bias, "C")):
        if bias is not None:
            bias = bias.to(dtype)
            bias = bias if inputs.mimo else bias[:, None]
            if name == "B":
                B = B + bias
            else:
                C = C + bias
    if inputs.mimo:
        v = x[:, :, :, None] * inputs.mimo_x.to(dtype)
        gate = F.silu(inputs.z.to(dtype)[:, :, :, None] * inputs.mimo_z.to(dtype)) if inputs.z is not None else None
    else:
        v = x[:, :, :, None]
        gate = F.silu(inputs.z.to(dtype))[:, :, :, None] if inputs.z is not None else None
    return B, C, v, gate


def finish_output(y: Tensor, v: Tensor, gate: Tensor | None, inputs: Mamba3Inputs) -> Tensor:
    """From h C̄ per rank, y (..., heads, rank, headdim): + D x^r, the gate, MIMO's down-projection; in x's dtype,
    (..., heads, headdim), or MIMO without mimo_o (..., rank, heads, headdim)."""
    if inputs.D is not None:
        y = y + inputs.D.to(y.dtype)[:, None, None] * v
    if gate is not None:
        y = y * gate
    if not inputs.mimo:
        y = y[..., 0, :]
    elif inputs.mimo_o is not None:
        y = (y * inputs.mimo_o.to(y.dtype)).sum(-2)
    else:
        y = rearrange(y, "... h r p -> ... r h p")
    return y.to(inputs.x.dtype)


def mamba3_reference(inputs: Mamba3Inputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, Mamba3State]:
    """The recurrence above, one token at a time for all rows at once. Returns y (batch, length, heads, headdim)
    (MIMO without mimo_o: (batch, length, rank, heads, headdim)) in x's dtype, or with ``output_final_state``
    (y, Mamba3State) in float32 (float64 for float64 x)."""
    dtype = compute_dtype(inputs.x)
    B, C, v, gate = as_rank_form(inputs, dtype)
    batch, length, heads, rank, d_state = B.shape
    headdim = v.shape[-1]
    dt, A = inputs.dt.to(dtype), inputs.A.to(dtype)
    lam = torch.sigmoid(inputs.trap.to(dtype))
    alpha = torch.exp(dt * A)
    beta = (1 - lam) * dt * alpha
    gamma = lam * dt
    turn = math.pi * torch.tanh(inputs.angles.to(dtype)) * dt[..., None]  # Δ_t θ_t
    x = inputs.x.to(dtype)
    segments, init = inputs.segments, inputs.initial_state
    n_angles = turn.shape[-1]

    def start_states(docs: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(φ, h, B̄_prev, x_prev) entering the documents ``docs`` (rows when None)."""
        if init is None:
            z = x.new_zeros
            return (z(batch, heads, n_angles), z(batch, heads, headdim, d_state), z(batch, heads, rank, d_state),
                    z(batch, heads, headdim))
        angle, ssm, k, vx = (t.to(dtype) for t in init)
        k = k if inputs.mimo else k[:, :, None]
        if docs is not None:
            angle, ssm, k, vx = (t.index_select(0, docs) for t in (angle, ssm, k, vx))
        return angle, ssm, k, vx

    phi, h, k_prev, x_prev = start_states(segments.doc[:, 0] if segments is not None else None)
    mimo_x = inputs.mimo_x.to(dtype) if inputs.mimo else None
    ys, finals, final_docs = [], [], []
    for t in range(length):
        if segments is not None and t > 0:
            fresh = start_states(segments.doc[:, t])
            starts = segments.starts[:, t]
            phi, h, k_prev, x_prev = (torch.where(starts.view(-1, *[1] * (old.dim() - 1)), new, old)
                                      for new, old in zip(fresh, (phi, h, k_prev, x_prev)))
        phi = torch.remainder(phi + turn[:, t], TWO_PI)
        cos, sin = torch.cos(phi)[:, :, None], torch.sin(phi)[:, :, None]  # one phase for every rank
        k_t = rotate(B[:, t], cos, sin, inputs.pairs)  # B̄_t (batch, heads, rank, d_state)
        q_t = rotate(C[:, t], cos, sin, inputs.pairs)  # C̄_t
        v_prev = x_prev[:, :, None] * mimo_x if inputs.mimo else x_prev[:, :, None]
        h = (alpha[:, t, :, None, None] * h
             + beta[:, t, :, None, None] * torch.einsum("bhrp,bhrn->bhpn", v_prev, k_prev)
             + gamma[:, t, :, None, None] * torch.einsum("bhrp,bhrn->bhpn", v[:, t], k_t))
        ys.append(torch.einsum("bhpn,bhrn->bhrp", h, q_t))
        k_prev, x_prev = k_t, x[:, t]
        if output_final_state:
            ends = (segments.starts[:, t + 1] if t + 1 < length else torch.ones_like(segments.starts[:, 0])) \
                if segments is not None else None
            if segments is None and t == length - 1:
                finals.append((phi, h, k_prev, x_prev))
            elif ends is not None and bool(ends.any()):
                rows = ends.nonzero().flatten()
                finals.append(tuple(s.index_select(0, rows) for s in (phi, h, k_prev, x_prev)))
                final_docs.append(segments.doc[rows, t])
    y = finish_output(torch.stack(ys, dim=1), v, gate, inputs)
    if not output_final_state:
        return y
    state = [torch.cat(parts) for parts in zip(*finals)]
    if final_docs:  # documents end in time order: put them in document order
        order = torch.argsort(torch.cat(final_docs))
        state = [s.index_select(0, order) for s in state]
    if not inputs.mimo:
        state[2] = state[2][:, :, 0]
    return y, Mamba3State(*state)
