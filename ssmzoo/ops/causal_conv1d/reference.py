"""Depthwise causal 1-D convolution, as used before Mamba's scan (Gu & Dao 2023, Fig. 3): the oracle.

With x̃ = [initial_state, x] (the W-1 inputs before x, zeros for a fresh stream, then x),
    y_t = bias + Σ_{k=0}^{W-1} weight[:, k] x̃_{t+k}
so the last tap weight[:, W-1] multiplies the current input (the convention of F.conv1d with
left padding, and of the causal-conv1d package). The final state is the last W-1 entries of x̃.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class ConvInputs(NamedTuple):
    """One call's inputs, as every backend receives them (the public function checks them):
    x (batch, D, L); weight (D, W); bias (D,); activation None or "silu"; initial_state (batch, D, W-1)."""

    x: Tensor
    weight: Tensor
    bias: Tensor | None = None
    activation: str | None = None
    initial_state: Tensor | None = None


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


def causal_conv1d_reference(x: ConvInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """y (batch, D, L) [, final_state (batch, D, W-1)]: the sum over taps, as in the equation above."""
    u, weight, bias, activation, initial_state = x
    length, width = u.shape[-1], weight.shape[-1]
    xp = padded_input(u, width, initial_state)
    y = sum(weight[:, k, None] * xp[..., k : k + length] for k in range(width))
    if bias is not None:
        y = y + bias[:, None]
    y = apply_activation(y, activation)
    return (y, final_state(xp, width)) if output_final_state else y
