"""The SpaceTime forecaster (Zhang et al., ICLR 2023, arXiv 2303.09489), laid out as the paper's network for the
Informer benchmark (its code's ``embedding/repeat``, ``encoder/default``, ``decoder/default``,
``output/default`` configs):

    instance norm -> embedding -> encoder blocks -> closed-loop decoder -> output MLP -> norm undone

- embedding: ``repeat`` copies the input channel(s) across d_model (no parameters), ``linear`` maps them;
- the first encoder block first applies fixed preprocessing filters (per channel: differencing of order
  0..3 or a moving-average residual with a random window, cycling in groups as in the paper's code);
  every block then adds s + MLP(s) to its input, s = a companion SSM (``encoder_kernels`` distinct SSMs
  in the first block, each shared by d_model / encoder_kernels channels; one per channel after it) and
  MLP(s) = Linear(Dropout(GELU(s)));
- the decoder is the closed-loop companion SSM (one per channel): it reads the lag window, then rolls its
  state on its own next-input predictions û = kᵀx over the horizon;
- the output MLP maps d_model to the output channel(s): Linear(Dropout(GELU(·))).

Loss (the paper's three terms, each an MSE or, as the paper trains, an RMSE): the horizon forecast, plus
``lag_weight`` × the decoder's open-loop one-step-ahead outputs over the lag window (through the output
MLP, against the next value of the series, the first horizon value included), plus ``input_weight`` × its
next-input predictions û_t against its actual next inputs u_{t+1}. Both lag terms skip the first
``lag_skip`` positions (the paper's code: d_state − 1).

Where this differs from the paper's code: the companion ``a`` is capped at ||a||_1 <= max_a_norm (the
code divides a, b, c and k by their L1 norms), and the SSM parameters get no weight decay.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..layers.base import input_checks
from ..layers.spacetime import ClosedLoopCompanionSSM, ClosedLoopOutput, CompanionSSM
from ..modules.fft_conv import fft_conv
from .forecaster import Forecaster
from .instance_norm import InstanceNorm, InstanceNormMode, merge_channels, split_channels


def preprocessing_taps(d_model: int, length: int, diff_orders: list[int], ma_per_group: int,
                       ma_windows: list[int]) -> Tensor:
    """Fixed causal filters (d_model, length), tap j multiplying u_{t−j}. Channels go in groups of
    len(diff_orders) + ma_per_group: first the differences Δ^o (o in diff_orders; Δ^0 is the identity),
    then moving-average residuals u_t − mean(u_{t−w+1..t}) with the next windows of ``ma_windows``
    (cycled); windows longer than ``length`` are cut there (the mean still divides by w, as in the paper)."""
    group = len(diff_orders) + ma_per_group
    taps = torch.zeros(d_model, length)
    next_window = 0
    for c in range(d_model):
        j = c % group
        if j < len(diff_orders):
            order = diff_orders[j]
            for i in range(min(order + 1, length)):
                taps[c, i] = (-1) ** i * math.comb(order, i)
        else:
            w = ma_windows[next_window % len(ma_windows)]
            next_window += 1
            taps[c, : min(w, length)] -= 1.0 / w
            taps[c, 0] += 1.0
    return taps


class SpaceTime(Forecaster):
    """Args:
        n_inputs, n_outputs, lookback, horizon: see Forecaster.
        d_model: width of the residual stream (the paper: 128).
        d_state: state size of every companion SSM (the paper's ``kernel_dim``: 64).
        n_blocks: encoder blocks (the paper's ETT runs: 1).
        encoder_kernels: distinct companion SSMs in the first block (the paper: 16; capped at d_model,
            must then divide it).
        embedding: "repeat" (channels copied across d_model, which their count must divide) or "linear".
        diff_orders: differencing orders of the preprocessing filters ([] for none).
        ma_per_group: moving-average-residual filters per group of preprocessing channels.
        ma_window_range: [low, high): their windows are drawn uniformly from it with ``preprocess_seed``.
        dropout: in the MLPs.
        instance_norm: see :class:`ssmzoo.models.instance_norm.InstanceNorm` (the paper: "mean").
        channel_independent: one window per channel through shared weights (needs n_outputs == n_inputs,
            or one input channel).
        lag_weight, input_weight: weights of the lag and input-prediction loss terms.
        lag_skip: lag positions left out of those terms (None: d_state − 1, as the paper's code).
        loss: "mse", or "rmse" (the square root of each term's MSE: the paper's ``informer_rmse``).
        max_a_norm: cap on ||a||_1 of every companion SSM (see ``ssmzoo.layers.spacetime.capped_a``).
        lr: learning rate of the SSM parameters (None: the optimiser's), see tag_param.
    """

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        lookback: int,
        horizon: int,
        d_model: int = 128,
        d_state: int = 64,
        n_blocks: int = 1,
        encoder_kernels: int = 16,
        embedding: Literal["repeat", "linear"] = "linear",
        diff_orders: list[int] = [0, 1, 2, 3],  # noqa: B006 (read only)
        ma_per_group: int = 4,
        ma_window_range: list[int] = [4, 720],  # noqa: B006 (read only)
        preprocess_seed: int = 0,
        dropout: float = 0.0,
        instance_norm: InstanceNormMode = "mean",
        channel_independent: bool = False,
        lag_weight: float = 1.0,
        input_weight: float = 1.0,
        lag_skip: int | None = None,
        loss: Literal["mse", "rmse"] = "mse",
        max_a_norm: float | None = 0.99,
        lr: float | None = None,
    ) -> None:
        super().__init__(n_inputs, n_outputs, lookback, horizon)
        name = type(self).__name__
        for arg, v in (("d_model", d_model), ("d_state", d_state), ("n_blocks", n_blocks),
                       ("encoder_kernels", encoder_kernels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: {arg} must be a positive int, got {v!r}")
        if embedding not in ("repeat", "linear"):
            raise ValueError(f"{name}: embedding must be 'repeat' or 'linear', got {embedding!r}")
        if loss not in ("mse", "rmse"):
            raise ValueError(f"{name}: loss must be 'mse' or 'rmse', got {loss!r}")
        if channel_independent and n_inputs > 1 and n_outputs != n_inputs:
            raise ValueError(f"{name}: channel_independent needs n_outputs == n_inputs (features M or S), got "
                             f"n_inputs={n_inputs}, n_outputs={n_outputs}")
        width_in = 1 if channel_independent else n_inputs
        self.width_out = 1 if channel_independent else n_outputs
        if embedding == "repeat" and d_model % width_in:
            raise ValueError(f"{name}: embedding='repeat' needs d_model={d_model} to be a multiple of the "
                             f"{width_in} input channels; use embedding='linear' or channel_independent=True")
        kernels = min(encoder_kernels, d_model)
        if d_model % kernels:
            raise ValueError(f"{name}: encoder_kernels={encoder_kernels} must divide d_model={d_model}")
        if any(isinstance(o, bool) or not isinstance(o, int) or o < 0 for o in diff_orders):
            raise ValueError(f"{name}: diff_orders must be ints >= 0, got {diff_orders!r}")
        if isinstance(ma_per_group, bool) or not isinstance(ma_per_group, int) or ma_per_group < 0 \
                or not diff_orders and not ma_per_group:
            raise ValueError(f"{name}: ma_per_group must be an int >= 0 (and > 0 without diff_orders), "
                             f"got {ma_per_group!r}")
        if len(ma_window_range) != 2 or not 2 <= ma_window_range[0] < ma_window_range[1]:
            raise ValueError(f"{name}: ma_window_range must be [low, high) with 2 <= low < high, got {ma_window_range!r}")
        self.lag_skip = d_state - 1 if lag_skip is None else lag_skip
        if isinstance(self.lag_skip, bool) or not isinstance(self.lag_skip, int) or not 0 <= self.lag_skip < lookback:
            raise ValueError(f"{name}: lag_skip must be an int in [0, lookback={lookback}), got {self.lag_skip!r} "
                             "(None: d_state − 1)")
        self.channel_independent, self.embedding_kind, self.loss_kind = channel_independent, embedding, loss
        self.lag_weight, self.input_weight = lag_weight, input_weight
        self.norm = InstanceNorm(n_inputs, instance_norm)
        self.embedding = nn.Linear(width_in, d_model) if embedding == "linear" else None
        # the preprocessing filters' windows, drawn once from a fixed seed (buffers: they travel with checkpoints)
        group = len(diff_orders) + ma_per_group
        n_ma = ma_per_group * -(-d_model // group)
        generator = torch.Generator().manual_seed(preprocess_seed)
        windows = torch.randint(ma_window_range[0], ma_window_range[1], (max(n_ma, 1),), generator=generator)
        self.register_buffer("preprocess", preprocessing_taps(d_model, lookback, list(diff_orders), ma_per_group,
                                                              windows.tolist()))
        self.ssms = nn.ModuleList(
            CompanionSSM(d_model, d_state, kernel_repeat=d_model // kernels if i == 0 else 1,
                         max_a_norm=max_a_norm, lr=lr, activation="identity", output="none")
            for i in range(n_blocks)
        )
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(d_model, d_model)) for _ in range(n_blocks)
        )
        self.decoder = ClosedLoopCompanionSSM(d_model, d_state, horizon, max_a_norm=max_a_norm, lr=lr)
        self.output = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(d_model, self.width_out))

    def _preprocess(self, z: Tensor) -> Tensor:
        """Embedding, then the fixed preprocessing filters: (batch', lookback, width_in) -> (batch', lookback, d_model)."""
        if self.embedding is None:
            # the r copies of an input channel differ only in their filter: transform each channel once and
            # broadcast it over its r filters, rather than transforming r identical copies
            r = self.preprocess.shape[0] // z.shape[-1]
            taps = rearrange(self.preprocess, "(r c) l -> r c l", r=r)
            # fixed filters of a parameter-free embedding: no graph to keep unless the norm has parameters
            with torch.set_grad_enabled(torch.is_grad_enabled() and z.requires_grad):
                return rearrange(fft_conv(rearrange(z, "b l c -> b 1 c l"), taps), "b r c l -> b l (r c)")
        return fft_conv(self.embedding(z).transpose(1, 2), self.preprocess).transpose(1, 2)

    def _encode(self, z: Tensor) -> Tensor:
        """Normalised windows (batch', lookback, width_in) -> the decoder's input (batch', lookback, d_model)."""
        u = self._preprocess(z)
        with input_checks(False):  # x was checked once, in _run
            for ssm, mlp in zip(self.ssms, self.mlps):
                s = ssm(u)
                u = u + s + mlp(s)
        return u

    def _run(self, x: Tensor) -> tuple[Tensor, Tensor, ClosedLoopOutput, Tensor, tuple | None]:
        """(forecast, normalised windows, decoder output, decoder input, normalisation stats)."""
        self.check_input(x)
        z, stats = self.norm(x)
        if self.channel_independent:
            z = split_channels(z)
        u = self._encode(z)
        out = self.decoder(u)
        forecast = self.output(out.forecast)
        if self.channel_independent:
            forecast = merge_channels(forecast, self.n_inputs)
        return self.norm.inverse(forecast[..., -self.n_outputs :], stats), z, out, u, stats

    def forward(self, x: Tensor) -> Tensor:
        """x (batch, lookback, n_inputs) -> forecast (batch, horizon, n_outputs)."""
        return self._run(x)[0]

    def _criterion(self, prediction: Tensor, target: Tensor) -> Tensor:
        mse = F.mse_loss(prediction, target)
        return mse.sqrt() if self.loss_kind == "rmse" else mse

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        forecast, z, out, u, stats = self._run(x)
        loss = self._criterion(forecast, y)
        s = self.lag_skip
        if self.lag_weight:
            # the lag output at t predicts the (normalised) series at t + 1; after the last lag step, y's first value
            first = self.norm.apply(y[:, :1], stats)
            if self.channel_independent:
                first = split_channels(first)
            series = torch.cat([z[..., -self.width_out :], first], dim=1)
            lag_prediction = self.output(out.lag_output)
            loss = loss + self.lag_weight * self._criterion(lag_prediction[:, s:], series[:, s + 1 :])
        if self.input_weight and s < self.lookback - 1:
            loss = loss + self.input_weight * self._criterion(out.input_prediction[:, s:-1], u[:, s + 1 :])
        return loss
