"""Position-wise feed-forward networks: the plain MLP and the gated (GLU) family.

    plain:  y = down(dropout(act(up(x))))
    gated:  y = down(dropout(a · act(g))),  [a ‖ g] = up(x)    (Dauphin et al. 2017; Shazeer 2020)

The gated form with act = sigmoid is the original GLU (nn.GLU), with SiLU it is SwiGLU.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_bool, check_choice, check_float, check_int

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu, "sigmoid": F.sigmoid}


class MLP(nn.Module):
    """x (..., d_model) -> (..., d_model).

    Args:
        d_model: input and output width.
        hidden: hidden width (of a and of g each, in the gated form).
        activation: "gelu", "silu", "relu" or "sigmoid".
        gated: the GLU form (up projects to 2 · hidden).
        dropout: on the hidden activations.
        bias: biases in ``up`` and ``down``.
    """

    def __init__(
        self,
        d_model: int,
        hidden: int,
        activation: Literal["gelu", "silu", "relu", "sigmoid"] = "gelu",
        gated: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        check_int("MLP", "d_model", d_model)
        check_int("MLP", "hidden", hidden)
        check_choice("MLP", "activation", activation, tuple(ACTIVATIONS))
        check_bool("MLP", "gated", gated)
        check_float("MLP", "dropout", dropout, at_least=0.0, below=1.0)
        check_bool("MLP", "bias", bias)
        self.d_model, self.hidden, self.activation, self.gated = d_model, hidden, activation, gated
        self.up = nn.Linear(d_model, (2 if gated else 1) * hidden, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.down = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        act = ACTIVATIONS[self.activation]
        if self.gated:
            a, g = self.up(x).chunk(2, dim=-1)
            h = a * act(g)
        else:
            h = act(self.up(x))
        return self.down(self.dropout(h))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, gated={self.gated}"
