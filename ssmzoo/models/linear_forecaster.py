"""Linear baselines (Zeng et al., "Are Transformers Effective for Time Series Forecasting?", 2023):
NLinear (one linear map lookback -> horizon on the series minus its last value) and DLinear
(separate linear maps for a moving-average trend and the remainder). Shared across channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .forecaster import Forecaster


class LinearForecaster(Forecaster):
    """Args: n_inputs, n_outputs, lookback, horizon (see Forecaster); decomposition: False for
    NLinear, True for DLinear; moving_average: DLinear's trend window (odd)."""

    def __init__(self, n_inputs: int, n_outputs: int, lookback: int, horizon: int,
                 decomposition: bool = False, moving_average: int = 25) -> None:
        super().__init__(n_inputs, n_outputs, lookback, horizon)
        if moving_average < 1 or moving_average % 2 == 0:
            raise ValueError(f"LinearForecaster: moving_average must be a positive odd int, got {moving_average}")
        self.decomposition, self.moving_average = decomposition, moving_average
        self.linear = nn.Linear(lookback, horizon)
        self.trend_linear = nn.Linear(lookback, horizon) if decomposition else None

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        last = x[:, -1:]
        u = rearrange(x - last, "b l c -> b c l")
        if self.trend_linear is None:
            out = self.linear(u)
        else:
            half = self.moving_average // 2  # DLinear pads by repeating the end values
            padded = torch.cat([u[..., :1].expand(-1, -1, half), u, u[..., -1:].expand(-1, -1, half)], -1)
            trend = F.avg_pool1d(padded, self.moving_average, stride=1)
            out = self.linear(u - trend) + self.trend_linear(trend)
        return rearrange(out, "b c h -> b h c")[..., -self.n_outputs :] + last[..., -self.n_outputs :]
