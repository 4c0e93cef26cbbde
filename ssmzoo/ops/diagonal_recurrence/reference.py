"""A diagonal linear recurrence, sequentially: the oracle every backend is tested against.

    h_t = λ_t ⊙ h_{t-1} + x_t        (h_t = λ_t ⊙ h_{t+1} + x_t with ``reverse``)

with a diagonal (elementwise) λ, real or complex, constant or per step. This is the state update of S5
(Smith, Warrington, Linderman, "Simplified State Space Layers for Sequence Modeling", arXiv 2208.04933,
eq. 6: x_k = Λ̄ x_{k-1} + B̄ u_k, with x_t = B̄ u_t given here) and of the LRU (Orvieto et al.,
"Resurrecting Recurrent Neural Networks for Long Sequences", arXiv 2303.06349, eq. 1 with a diagonal
complex Λ: x_k = Λ x_{k-1} + γ ⊙ B u_k). Before the first step of a row, or of a document when
``segments`` pack several into a row, h is that sequence's initial state (zeros when none is given):
no state crosses a document boundary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .inputs import RecurrenceInputs, num_states


def diagonal_recurrence_reference(
    inputs: RecurrenceInputs, output_final_state: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """h (batch, length, dim) [, final states (batch or num_docs, dim)]: every step's state, in x's dtype."""
    x, decay, reverse, initial_state, segments = inputs
    batch, length, dim = x.shape
    per_step = decay.dim() == 3
    spans = segments.spans if segments is not None else [(row, 0, length) for row in range(batch)]
    rows: list[list[Tensor | None]] = [[None] * length for _ in range(batch)]
    finals = []
    for k, (row, start, stop) in enumerate(spans):
        h = initial_state[k] if initial_state is not None else x.new_zeros(dim)
        order = range(stop - 1, start - 1, -1) if reverse else range(start, stop)
        for t in order:
            lam = decay[row, t] if per_step else decay
            h = lam * h + x[row, t]
            rows[row][t] = h
        finals.append(h)
    out = torch.stack([torch.stack(r) for r in rows])  # type: ignore[arg-type]
    if not output_final_state:
        return out
    final = torch.stack(finals) if finals else x.new_zeros(num_states(inputs), dim)
    return out, final
