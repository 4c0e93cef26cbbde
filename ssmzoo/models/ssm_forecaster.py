"""A small forecaster around any registered sequence layer (S4D by default), as a baseline:
lookback -> linear embedding -> residual layer blocks -> linear map over time to the horizon
-> linear head to the output channels. The series minus its last value goes in."""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from .. import layers
from ..layers.base import input_checks
from .forecaster import Forecaster


class SSMForecaster(Forecaster):
    """Args: n_inputs, n_outputs, lookback, horizon (see Forecaster); layer: a registered layer name;
    layer_args: its arguments besides d_model; d_model, n_layers: width and depth; dropout."""

    def __init__(self, n_inputs: int, n_outputs: int, lookback: int, horizon: int, layer: str = "s4d",
                 layer_args: dict | None = None, d_model: int = 64, n_layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__(n_inputs, n_outputs, lookback, horizon)
        self.embedding = nn.Linear(n_inputs, d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.blocks = nn.ModuleList(layers.build(layer, d_model=d_model, **(layer_args or {})) for _ in range(n_layers))
        self.dropout = nn.Dropout(dropout)
        self.time_projection = nn.Linear(lookback, horizon)
        self.head = nn.Linear(d_model, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        last = x[:, -1:, -self.n_outputs :]
        h = self.embedding(x - x[:, -1:])
        with input_checks(False):  # x was checked once, above
            for norm, block in zip(self.norms, self.blocks):
                h = h + self.dropout(block(norm(h)))
        h = rearrange(self.time_projection(rearrange(h, "b l d -> b d l")), "b d h -> b h d")
        return self.head(h) + last
