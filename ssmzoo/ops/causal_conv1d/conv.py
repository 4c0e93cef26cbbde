"""The fast path of the causal conv on every device: one grouped F.conv1d over the padded input.

(A C++ kernel did not pay off: for Mamba's widths (W = 4) the depthwise conv is memory bound, and
PyTorch's own depthwise conv1d, forward and backward, is already a single vectorised pass.)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .reference import ConvInputs, apply_activation, final_state, padded_input


def causal_conv1d_conv(x: ConvInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`causal_conv1d_reference`, by one grouped F.conv1d."""
    u, weight, bias, activation, initial_state = x
    width = weight.shape[-1]
    xp = padded_input(u, width, initial_state)
    y = apply_activation(F.conv1d(xp, weight[:, None, :], bias, groups=u.shape[1]), activation)
    return (y, final_state(xp, width)) if output_final_state else y
