"""The interface every forecaster shares, so the task and the benchmarks treat them alike."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


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
        expected = (self.lookback, self.n_inputs)
        if not isinstance(x, Tensor) or x.dim() != 3 or tuple(x.shape[1:]) != expected:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__}: x must have shape (batch, lookback={self.lookback}, "
                f"n_inputs={self.n_inputs}), got {got}"
            )

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(self(x), y)
