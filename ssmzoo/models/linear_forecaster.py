"""Linear baselines (Zeng et al., "Are Transformers Effective for Time Series Forecasting?", AAAI 2023):
NLinear (one linear map lookback -> horizon on the series minus its last value) and DLinear
(separate linear maps for a moving-average trend and the remainder, on the raw series). One map shared
by every channel (the papers' default, ``individual=False``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .forecaster import Forecaster
from .instance_norm import InstanceNorm, InstanceNormMode


class LinearForecaster(Forecaster):
    """Args: n_inputs, n_outputs, lookback, horizon (see Forecaster); decomposition: False for
    NLinear, True for DLinear; moving_average: DLinear's trend window (odd); instance_norm: see
    :class:`ssmzoo.models.instance_norm.InstanceNorm` (None: the paper's, ``last`` for NLinear and
    ``none`` for DLinear)."""

    def __init__(self, n_inputs: int, n_outputs: int, lookback: int, horizon: int,
                 decomposition: bool = False, moving_average: int = 25,
                 instance_norm: InstanceNormMode | None = None) -> None:
        super().__init__(n_inputs, n_outputs, lookback, horizon)
        if isinstance(moving_average, bool) or not isinstance(moving_average, int) or moving_average < 1 \
                or moving_average % 2 == 0:
            raise ValueError(f"LinearForecaster: moving_average must be a positive odd int, got {moving_average!r}")
        self.decomposition, self.moving_average = decomposition, moving_average
        mode = instance_norm if instance_norm is not None else ("none" if decomposition else "last")
        self.norm = InstanceNorm(n_inputs, mode)
        self.linear = nn.Linear(lookback, horizon)
        self.trend_linear = nn.Linear(lookback, horizon) if decomposition else None

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        z, stats = self.norm(x)
        u = rearrange(z, "b l c -> b c l")
        if self.trend_linear is None:
            out = self.linear(u)
        else:
            half = self.moving_average // 2  # DLinear pads by repeating the end values
            padded = torch.cat([u[..., :1].expand(-1, -1, half), u, u[..., -1:].expand(-1, -1, half)], -1)
            trend = F.avg_pool1d(padded, self.moving_average, stride=1)
            out = self.linear(u - trend) + self.trend_linear(trend)
        return self.norm.inverse(rearrange(out, "b c h -> b h c")[..., -self.n_outputs :], stats)
