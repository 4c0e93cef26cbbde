"""The output stage of S5 and LRU layers: GELU, then a GLU-style gate back to d_model, with dropout.

The variants of S5's code (``activation_fn``; the LRU uses ``full_glu``), y being the SSM's output:
- ``full_glu``:  z = dropout(gelu(y));  out = W1 z ⊙ σ(W2 z)
- ``half_glu1``: z = dropout(gelu(y));  out = z ⊙ σ(W2 z)
- ``half_glu2``: z = dropout(gelu(y));  out = y ⊙ σ(W2 z)     (GELU on the gate's input only)
- ``gelu``:      out = dropout(gelu(y))
each followed by dropout.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_choice, check_float, check_int

KINDS = ("full_glu", "half_glu1", "half_glu2", "gelu")


class GatedOutput(nn.Module):
    def __init__(self, d_model: int, kind: Literal["full_glu", "half_glu1", "half_glu2", "gelu"], dropout: float,
                 owner: str = "GatedOutput") -> None:
        super().__init__()
        check_int(owner, "d_model", d_model)
        check_choice(owner, "activation", kind, KINDS)
        check_float(owner, "dropout", dropout, at_least=0.0, below=1.0)
        self.kind = kind
        self.dropout = nn.Dropout(dropout)
        self.out1 = nn.Linear(d_model, d_model) if kind == "full_glu" else None
        self.out2 = nn.Linear(d_model, d_model) if kind != "gelu" else None

    def forward(self, y: Tensor) -> Tensor:
        z = self.dropout(F.gelu(y))
        if self.kind == "full_glu":
            z = self.out1(z) * self.out2(z).sigmoid()
        elif self.kind == "half_glu1":
            z = z * self.out2(z).sigmoid()
        elif self.kind == "half_glu2":
            z = y * self.out2(z).sigmoid()
        return self.dropout(z) if self.kind != "gelu" else z
