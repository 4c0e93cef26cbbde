"""Position-wise feed-forward networks: the plain MLP and the gated (GLU) family.

    plain:  y = down(dropout(act(up(x))))
    gated:  y = down(dropout(a · act(g))),  [a ‖ g] = up(x)    (Dauphin et al. 2017; Shazeer 2020)

The gated form with act = sigmoid is the original GLU (nn.GLU), with SiLU it is SwiGLU. "relu2" is the squared
ReLU, relu(x)² (So et al. 2021, "Primer", arXiv 2109.08668; Nemotron-H's MLPs). Falcon-H1's µP multipliers scale
the activation's input (``gate_multiplier``) and the output (``output_multiplier``).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_bool, check_choice, check_float, check_int

def relu2(x: Tensor) -> Tensor:
    """The squared ReLU, relu(x)²."""
    return F.relu(x).square()


ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu, "sigmoid": F.sigmoid, "relu2": relu2}


class MLP(nn.Module):
    """x (..., d_model) -> (..., d_model).

    Args:
        d_model: input and output width.
        hidden: hidden width (of a and of g each, in the gated form).
        activation: "gelu", "silu", "relu", "sigmoid" or "relu2" (squared ReLU).
        gated: the GLU form (up projects to 2 · hidden).
        dropout: on the hidden activations.
        bias: biases in ``up`` and ``down``.
        gate_multiplier: multiplies the activation's input (g in the gated form, up(x) in the plain one).
        output_multiplier: multiplies the output.
    """

    def __init__(
        self,
        d_model: int,
        hidden: int,
        activation: Literal["gelu", "silu", "relu", "sigmoid", "relu2"] = "gelu",
        gated: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
        gate_multiplier: float = 1.0,
        output_multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        check_int("MLP", "d_model", d_model)
        check_int("MLP", "hidden", hidden)
        check_choice("MLP", "activation", activation, tuple(ACTIVATIONS))
        check_bool("MLP", "gated", gated)
        check_float("MLP", "dropout", dropout, at_least=0.0, below=1.0)
        check_bool("MLP", "bias", bias)
        self.gate_multiplier = check_float("MLP", "gate_multiplier", gate_multiplier)
        self.output_multiplier = check_float("MLP", "output_multiplier", output_multiplier)
        self.d_model, self.hidden, self.activation, self.gated = d_model, hidden, activation, gated
        self.up = nn.Linear(d_model, (2 if gated else 1) * hidden, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.down = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor, up_delta: Tensor | None = None) -> Tensor:
        """x (..., d_model) -> (..., d_model); ``up_delta`` (..., width of ``up``) is added to up(x) first (a
        low-rank adapter's output)."""
        act = ACTIVATIONS[self.activation]
        u = self.up(x) if up_delta is None else self.up(x) + up_delta
        if self.gated:
            a, g = u.chunk(2, dim=-1)
            h = a * act(g if self.gate_multiplier == 1.0 else g * self.gate_multiplier)
        else:
            h = act(u if self.gate_multiplier == 1.0 else u * self.gate_multiplier)
        y = self.down(self.dropout(h))
        return y if self.output_multiplier == 1.0 else y * self.output_multiplier

    def extra_repr(self) -> str:
        multipliers = "" if (self.gate_multiplier, self.output_multiplier) == (1.0, 1.0) else \
            f", gate_multiplier={self.gate_multiplier}, output_multiplier={self.output_multiplier}"
        return f"activation={self.activation!r}, gated={self.gated}{multipliers}"
