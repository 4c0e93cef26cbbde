"""The interface every forecaster shares, so the task and the benchmarks treat them alike."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.base import check_finite
from ..modules.checks import autocast_enabled


class Forecaster(nn.Module):
    """Maps x (batch, lookback, n_inputs) to a forecast (batch, horizon, n_outputs).

    The output channels are the last n_outputs input channels (the data modules put the target
    last). ``loss(x, y)`` is the training objective; by default the MSE of the forecast."""

    def __init__(self, n_inputs: int, n_outputs: int, lookback: int, horizon: int) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, v in (("n_inputs", n_inputs), ("n_outputs", n_outputs), ("lookback", lookback), ("horizon", horizon)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: {arg} must be a positive int, got {v!r}")
        if n_outputs > n_inputs:
            raise ValueError(f"{name}: n_outputs={n_outputs} must not exceed n_inputs={n_inputs}")
        self.n_inputs, self.n_outputs, self.lookback, self.horizon = n_inputs, n_outputs, lookback, horizon

    def check_input(self, x: Tensor) -> None:
        """Shape, dtype and device of x, and (a value check, see ssmzoo.layers.base) NaN/inf. Subclasses
        call this once per forward and run their layers with the value checks off."""
        name = type(self).__name__
        expected = (self.lookback, self.n_inputs)
        if not isinstance(x, Tensor) or x.dim() != 3 or tuple(x.shape[1:]) != expected or x.shape[0] == 0:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{name}: x must have shape (batch >= 1, lookback={self.lookback}, n_inputs={self.n_inputs}), got {got}"
            )
        weight = next(self.parameters(), None)
        if weight is not None:
            if x.device != weight.device:
                raise ValueError(f"{name}: x is on {x.device} but the model is on {weight.device}")
            if x.dtype != weight.dtype and not autocast_enabled(x.device):
                raise ValueError(f"{name}: x has dtype {x.dtype} but the model's parameters are {weight.dtype}; "
                                 f"convert one to match (model.to({x.dtype}) or x.to({weight.dtype}))")
        check_finite(x, name, "x")

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(self(x), y)
