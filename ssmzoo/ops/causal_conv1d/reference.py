"""Depthwise causal 1-D convolution, as used before Mamba's scan: the oracle. Gu & Dao, "Mamba:
Linear-Time Sequence Modeling with Selective State Spaces" (arXiv:2312.00752), Figure 3.

With x̃ = [initial_state, x] (the W-1 inputs before x, zeros for a fresh stream, then x),
    y_t = bias + Σ_{k=0}^{W-1} weight[:, k] x̃_{t+k}
so the last tap weight[:, W-1] multiplies the current input (the convention of F.conv1d with
left padding, and of the causal-conv1d package). The final state is the last W-1 entries of x̃.
With packed documents (``segments``) every document is convolved alone, from its own initial state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .inputs import ConvInputs


def apply_activation(y: Tensor, activation: str | None) -> Tensor:
    return F.silu(y) if activation == "silu" else y


def padded_input(x: Tensor, width: int, initial_state: Tensor | None) -> Tensor:
    """x̃ (batch, D, W-1+L): the conv state followed by x."""
    if initial_state is None:
        initial_state = x.new_zeros(x.shape[0], x.shape[1], width - 1)
    return torch.cat([initial_state.to(x.dtype), x], dim=-1)


def final_state(padded: Tensor, width: int) -> Tensor:
    """The conv state after the call: the last W-1 entries of x̃."""
    return padded[..., padded.shape[-1] - (width - 1) :]


def _conv(u: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None,
          initial_state: Tensor | None) -> tuple[Tensor, Tensor]:
    length, width = u.shape[-1], weight.shape[-1]
    xp = padded_input(u, width, initial_state)
    y = sum(weight[:, k, None] * xp[..., k : k + length] for k in range(width))
    if bias is not None:
        y = y + bias[:, None]
    return apply_activation(y, activation), final_state(xp, width)


def causal_conv1d_reference(x: ConvInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """y (batch, D, L) [, final_state (batch or num_docs, D, W-1)]: the sum over taps, as in the equation above."""
    u, weight, bias, activation, initial_state, segments = x
    if segments is None:
        y, final = _conv(u, weight, bias, activation, initial_state)
    else:  # every document alone, from its own initial state
        rows: list[list[Tensor]] = [[] for _ in range(u.shape[0])]
        finals = []
        for k, (r, t0, t1) in enumerate(segments.spans):
            init = None if initial_state is None else initial_state[k : k + 1]
            y_doc, final = _conv(u[r : r + 1, :, t0:t1], weight, bias, activation, init)
            rows[r].append(y_doc)
            finals.append(final)
        y, final = torch.cat([torch.cat(parts, dim=-1) for parts in rows]), torch.cat(finals)
    return (y, final) if output_final_state else y
