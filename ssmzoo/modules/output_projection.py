"""The output of the convolutional SSM layers (S4, S4D, SpaceTime's): activation, dropout, then a
position-wise linear map or GLU back to d_model (the S4 block's output mixing)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from .checks import check_choice, check_float, check_int

ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh, "identity": nn.Identity}


class OutputProjection(nn.Module):
    """y (..., d_in) -> (..., d_model): proj(dropout(activation(y))).

    Args:
        d_in: input width (channels · d_model in the SSM layers).
        d_model: output width.
        activation: "gelu", "silu", "relu", "tanh" or "identity".
        output: "glu" (Linear to 2 · d_model, then GLU), "linear", or "none" (needs d_in == d_model).
        dropout: in [0, 1).
        owner: the layer's name, for error messages.
    """

    def __init__(
        self,
        d_in: int,
        d_model: int,
        activation: Literal["gelu", "silu", "relu", "tanh", "identity"],
        output: Literal["glu", "linear", "none"],
        dropout: float,
        owner: str = "OutputProjection",
    ) -> None:
        super().__init__()
        check_int(owner, "d_in", d_in)
        check_int(owner, "d_model", d_model)
        check_choice(owner, "activation", activation, tuple(ACTIVATIONS))
        check_choice(owner, "output", output, ("glu", "linear", "none"))
        check_float(owner, "dropout", dropout, at_least=0.0, below=1.0)
        if output == "none" and d_in != d_model:
            raise ValueError(f"{owner}: output='none' needs one channel per d_model (channels=1, heads=1); "
                             f"got {d_in // d_model} channels")
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        if output == "glu":
            self.proj: nn.Module = nn.Sequential(nn.Linear(d_in, 2 * d_model), nn.GLU(dim=-1))
        elif output == "linear":
            self.proj = nn.Linear(d_in, d_model)
        else:
            self.proj = nn.Identity()

    def forward(self, y: Tensor) -> Tensor:
        return self.proj(self.dropout(self.activation(y)))
