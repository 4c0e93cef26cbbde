"""The fast path of the causal conv on every device: one grouped F.conv1d over the padded input.

(A C++ kernel did not pay off: for Mamba's widths (W = 4) the depthwise conv is memory bound, and
PyTorch's own depthwise conv1d, forward and backward, is already a single vectorised pass.)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .reference import apply_activation, padded_input


def causal_conv1d_conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
    *,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    width = weight.shape[-1]
    xp = padded_input(x, width, initial_state)
    y = apply_activation(F.conv1d(xp, weight[:, None, :], bias, groups=x.shape[1]), activation)
    if output_final_state:
        return y, xp[..., xp.shape[-1] - (width - 1) :]
    return y
