"""A forecaster around any registered sequence layer (S4D, Mamba, Mamba-2, ...):
instance normalisation -> (optionally) one window per channel -> tokens (time steps or patches) ->
residual pre-norm layer blocks -> a head to the horizon -> the normalisation undone.

With ``channel_independent=True, patch_len=16, stride=8, head="flatten", instance_norm="revin"`` this is
PatchTST's recipe (Nie et al., ICLR 2023) with the Transformer encoder replaced by the sequence layer;
the defaults keep the earlier baseline (every time step a token, the series minus its last value, a
linear map over time then over channels).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .. import layers
from ..layers.base import input_checks
from .forecaster import Forecaster
from .instance_norm import InstanceNorm, InstanceNormMode, merge_channels, split_channels


class SSMForecaster(Forecaster):
    """Args:
        n_inputs, n_outputs, lookback, horizon: see Forecaster.
        layer: a registered layer name; layer_args: its arguments besides d_model.
        d_model, n_layers: width and depth; dropout: on each block's output and before the head.
        instance_norm: see :class:`ssmzoo.models.instance_norm.InstanceNorm`; revin_affine: RevIN's learned
            per-channel scale and shift (``instance_norm="revin"`` only).
        channel_independent: forecast every channel from its own history with shared weights (needs
            n_outputs == n_inputs, or a single input channel).
        patch_len, stride: tokens are patches of patch_len steps taken every stride steps (the series padded
            at the end by repeating its last value stride times, as PatchTST does); patch_len=1: every
            time step is a token. stride None: patch_len.
        head: "time" (a linear map over the tokens to the horizon, then over d_model to the outputs) or
            "flatten" (PatchTST's: all tokens' features flattened, one linear map to horizon · outputs).
        linear_skip: add a linear map lookback -> horizon of the normalised series, shared by the channels
            (with instance_norm "revin" that is RLinear, with "last" NLinear), so the layers learn a correction
            to a linear forecast.
    """

    def __init__(self, n_inputs: int, n_outputs: int, lookback: int, horizon: int, layer: str = "s4d",
                 layer_args: dict | None = None, d_model: int = 64, n_layers: int = 2, dropout: float = 0.0,
                 instance_norm: InstanceNormMode = "last", revin_affine: bool = False,
                 channel_independent: bool = False, patch_len: int = 1, stride: int | None = None,
                 head: Literal["time", "flatten"] = "time", linear_skip: bool = False) -> None:
        super().__init__(n_inputs, n_outputs, lookback, horizon)
        name = type(self).__name__
        for arg, v in (("d_model", d_model), ("n_layers", n_layers), ("patch_len", patch_len)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: {arg} must be a positive int, got {v!r}")
        stride = patch_len if stride is None else stride
        if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= patch_len:
            raise ValueError(f"{name}: stride must be an int in [1, patch_len={patch_len}] or None, got {stride!r}")
        if patch_len > lookback:
            raise ValueError(f"{name}: patch_len={patch_len} must not exceed lookback={lookback}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"{name}: dropout must be a number in [0, 1), got {dropout!r}")
        if not isinstance(linear_skip, bool):
            raise ValueError(f"{name}: linear_skip must be a bool, got {linear_skip!r}")
        if head not in ("time", "flatten"):
            raise ValueError(f"{name}: head must be 'time' or 'flatten', got {head!r}")
        if channel_independent and n_inputs > 1 and n_outputs != n_inputs:
            raise ValueError(f"{name}: channel_independent needs n_outputs == n_inputs (features M or S), got "
                             f"n_inputs={n_inputs}, n_outputs={n_outputs}")
        self.channel_independent, self.patch_len, self.stride, self.head_kind = channel_independent, patch_len, stride, head
        self.norm = InstanceNorm(n_inputs, instance_norm, affine=revin_affine)
        width_in, self.width_out = (1, 1) if channel_independent else (n_inputs, n_outputs)
        # patches: (lookback − patch_len) // stride + 1 windows, plus one more over the padding when patching
        self.n_tokens = lookback if patch_len == 1 else (lookback - patch_len) // stride + 2
        self.embedding = nn.Linear(width_in * patch_len, d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.blocks = nn.ModuleList(layers.build(layer, d_model=d_model, **(layer_args or {})) for _ in range(n_layers))
        self.dropout = nn.Dropout(dropout)
        self.final_norm = nn.LayerNorm(d_model)
        if head == "time":
            self.time_projection = nn.Linear(self.n_tokens, horizon)
            self.head = nn.Linear(d_model, self.width_out)
        else:
            self.head = nn.Linear(self.n_tokens * d_model, horizon * self.width_out)
        self.skip = nn.Linear(lookback, horizon) if linear_skip else None

    def _tokens(self, z: Tensor) -> Tensor:
        """(batch, lookback, c) -> (batch, n_tokens, c · patch_len)."""
        if self.patch_len == 1:
            return z
        u = rearrange(z, "b l c -> b c l")
        u = F.pad(u, (0, self.stride), mode="replicate")
        patches = u.unfold(-1, self.patch_len, self.stride)  # (b, c, n_tokens, patch_len)
        return rearrange(patches, "b c n p -> b n (c p)")

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        z, stats = self.norm(x)
        if self.channel_independent:
            z = split_channels(z)
        h = self.embedding(self._tokens(z))
        with input_checks(False):  # x was checked once, above
            for norm, block in zip(self.norms, self.blocks):
                h = h + self.dropout(block(norm(h)))
        h = self.dropout(self.final_norm(h))
        if self.head_kind == "time":
            h = rearrange(self.time_projection(rearrange(h, "b n d -> b d n")), "b d h -> b h d")
            y = self.head(h)
        else:
            y = rearrange(self.head(rearrange(h, "b n d -> b (n d)")), "b (h c) -> b h c", c=self.width_out)
        if self.skip is not None:
            y = y + rearrange(self.skip(rearrange(z[..., -self.width_out :], "b l c -> b c l")), "b c h -> b h c")
        if self.channel_independent:
            y = merge_channels(y, self.n_inputs)
        return self.norm.inverse(y[..., -self.n_outputs :], stats)
