"""The diagonal recurrence as a parallel associative scan in plain PyTorch (any device, autograd backward).

The pairs (a_t, x_t) compose by (a, x) ∘ (a', x') = (a' a, a' x + x'), the operator of S5's parallel scan
(arXiv 2208.04933, sec. 2.2 and app. H); a Hillis-Steele scan applies it in log2(length) elementwise steps.
Resets need no special case: at a token where the recurrence restarts the decay becomes 0 and the
document's initial state enters as part of the input (x_t + λ_t h0), so nothing flows across the
boundary. ``reverse`` flips time first and back after.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .inputs import RecurrenceInputs, num_states, reset_layout


def associative_scan(a: Tensor, x: Tensor) -> Tensor:
    """h along dim 1 with h_t = a_t h_{t-1} + x_t and h_{-1} = 0 (Hillis-Steele, log2(length) steps)."""
    step = 1
    while step < x.shape[1]:
        # Both updates read the previous a: h_t <- h_t + a_t h_{t-k}, then a_t <- a_t a_{t-k}.
        x = torch.cat([x[:, :step], x[:, step:] + a[:, step:] * x[:, :-step]], dim=1)
        a = torch.cat([a[:, :step], a[:, step:] * a[:, :-step]], dim=1)
        step *= 2
    return x


def diagonal_recurrence_scan(
    inputs: RecurrenceInputs, output_final_state: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`diagonal_recurrence_reference`."""
    x, decay, reverse, initial_state, _ = inputs
    batch, length, dim = x.shape
    resets, doc = reset_layout(inputs)
    a = decay.expand(batch, length, dim)
    if reverse:
        x, a, resets, doc = (t.flip(1) for t in (x, a, resets, doc))
    restart = resets[..., None]
    entering = a * initial_state[doc] if initial_state is not None else None
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    if entering is not None:
        x = torch.where(restart, x + entering, x)
    h = associative_scan(torch.where(restart, zero, a), x)
    out = h.flip(1) if reverse else h
    if not output_final_state:
        return out
    # A document's final state is its state at the last token it processes (in processing order): the
    # token before the next restart, or the row's end.
    last = torch.ones_like(resets)
    last[:, :-1] = resets[:, 1:]
    final = h.new_zeros(num_states(inputs), dim).index_copy(0, doc[last], h[last])
    return out, final
