"""The SpaceTime forecaster (Zhang et al., ICLR 2023, arXiv 2303.09489):
preprocessing embedding -> encoder blocks (companion + shift SSMs) -> closed-loop decoder.

The input minus its last value is embedded together with fixed preprocessing features
(differences of the given orders, moving-average residuals); each encoder block adds a companion
SSM and a shift SSM branch to a residual stream; the closed-loop companion SSM reads the lag
window and rolls its state over the horizon; a linear head maps back to the output channels.

Loss (the paper's three terms): horizon MSE of the forecast, plus ``lag_weight`` × MSE of the
decoder's one-step-ahead outputs over the lag window, plus ``input_weight`` × MSE of its
next-input predictions û_t against the decoder's actual next inputs u_{t+1} (held fixed, so the
encoder is not pulled toward an easy-to-predict representation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.base import input_checks
from ..layers.spacetime import (
    ClosedLoopCompanionSSM,
    ClosedLoopOutput,
    CompanionSSM,
    Differencing,
    MovingAverageResidual,
    ShiftSSM,
)
from .forecaster import Forecaster


class SpaceTime(Forecaster):
    """Args:
        n_inputs, n_outputs, lookback, horizon: see Forecaster.
        d_model: width of the residual stream.
        d_state: state size of every companion / shift SSM.
        n_blocks: encoder blocks.
        heads, kernel_repeat: passed to the encoder's CompanionSSM / ShiftSSM.
        diff_orders: differencing orders fed to the embedding ([] for none).
        ma_windows: moving-average-residual windows fed to the embedding ([] for none).
        dropout: on each encoder branch.
        lag_weight, input_weight: weights of the lag and input-prediction loss terms.
        lr: learning rate of the SSM parameters (a, b, k), see tag_param.
    """

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        lookback: int,
        horizon: int,
        d_model: int = 64,
        d_state: int = 64,
        n_blocks: int = 2,
        heads: int = 1,
        kernel_repeat: int = 1,
        diff_orders: list[int] = [1, 2],  # noqa: B006 (read only)
        ma_windows: list[int] = [4],  # noqa: B006 (read only)
        dropout: float = 0.0,
        lag_weight: float = 1.0,
        input_weight: float = 1.0,
        lr: float | None = 1e-3,
    ) -> None:
        super().__init__(n_inputs, n_outputs, lookback, horizon)
        self.lag_weight, self.input_weight = lag_weight, input_weight
        self.diff_orders, self.ma_windows = list(diff_orders), list(ma_windows)
        # each input channel repeated once per order / window, so channel c·n + j gets entry j
        self.differencing = Differencing(n_inputs * len(diff_orders), diff_orders) if diff_orders else None
        self.ma_residual = MovingAverageResidual(n_inputs * len(ma_windows), ma_windows) if ma_windows else None
        n_features = n_inputs * (1 + len(diff_orders) + len(ma_windows))
        self.embedding = nn.Linear(n_features, d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_blocks))
        self.companions = nn.ModuleList(
            CompanionSSM(d_model, d_state, heads=heads, kernel_repeat=kernel_repeat, lr=lr, dropout=dropout)
            for _ in range(n_blocks)
        )
        self.shifts = nn.ModuleList(
            ShiftSSM(d_model, d_state, heads=heads, kernel_repeat=kernel_repeat, lr=lr, dropout=dropout)
            for _ in range(n_blocks)
        )
        self.decoder_norm = nn.LayerNorm(d_model)
        self.decoder = ClosedLoopCompanionSSM(d_model, d_state, horizon, lr=lr)
        self.head = nn.Linear(d_model, n_outputs)

    def _run(self, x: Tensor) -> tuple[Tensor, Tensor, ClosedLoopOutput, Tensor]:
        """(forecast, centred input, decoder output, decoder input)."""
        self.check_input(x)
        last = x[:, -1:]
        centred = x - last
        features = [centred]
        with input_checks(False):  # x was checked once, above
            if self.differencing is not None:
                features.append(self.differencing(centred.repeat_interleave(len(self.diff_orders), dim=-1)))
            if self.ma_residual is not None:
                features.append(self.ma_residual(centred.repeat_interleave(len(self.ma_windows), dim=-1)))
            h = self.embedding(torch.cat(features, dim=-1))
            for norm, companion, shift in zip(self.norms, self.companions, self.shifts):
                z = norm(h)
                h = h + companion(z) + shift(z)
        u = self.decoder_norm(h)
        out = self.decoder(u)
        forecast = self.head(out.forecast) + last[..., -self.n_outputs :]
        return forecast, centred, out, u

    def forward(self, x: Tensor) -> Tensor:
        """x (batch, lookback, n_inputs) -> forecast (batch, horizon, n_outputs)."""
        return self._run(x)[0]

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        forecast, centred, out, u = self._run(x)
        loss = F.mse_loss(forecast, y)
        if self.lag_weight and self.lookback > 1:
            # the lag output at t predicts the (centred) target at t + 1
            lag_prediction = self.head(out.lag_output[:, :-1])
            loss = loss + self.lag_weight * F.mse_loss(lag_prediction, centred[:, 1:, -self.n_outputs :])
        if self.input_weight and self.lookback > 1:
            loss = loss + self.input_weight * F.mse_loss(out.input_prediction[:, :-1], u[:, 1:].detach())
        return loss
