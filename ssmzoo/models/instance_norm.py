"""What the forecasters share around their networks: instance normalisation of each window and channel
independence.

:class:`InstanceNorm` normalises every channel of a window by statistics of its own lookback and maps the
forecast back with the same statistics, so a level or scale shift between training and test windows does
not reach the network (RevIN, Kim et al., ICLR 2022; NLinear's last-value subtraction and SpaceTime's
``mean`` data transform are its simpler forms). :func:`split_channels` / :func:`merge_channels` turn a
window of C channels into C one-channel windows and back, so one network with shared weights forecasts
every channel from its own history (channel independence, as in PatchTST and LTSF-Linear).
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

InstanceNormMode = Literal["none", "last", "mean", "revin"]


class InstanceNorm(nn.Module):
    """Per-window, per-channel normalisation of x (batch, lookback, channels), undone on the forecast.

    Modes (loc and scale are per window and channel, taken over the lookback):
        ``none``: identity.
        ``last``: loc = the last lookback value, scale 1 (NLinear).
        ``mean``: loc = the lookback mean, scale 1 (SpaceTime's ``mean`` transform).
        ``revin``: loc = the lookback mean, scale = sqrt(biased variance + eps) (RevIN); with ``affine``
            the normalised values are then scaled and shifted by learned per-channel weights.

    ``forward(x)`` returns (normalised x, stats); ``inverse(y, stats)`` maps a forecast y (batch, horizon,
    n) back, where the n channels are the last n of x's (the data modules put the targets last).

    Args:
        n_channels: channels of x.
        mode: see above.
        affine: learned per-channel scale and shift (``revin`` only; RevIN's default is True).
        eps: added to the variance.
    """

    def __init__(self, n_channels: int, mode: InstanceNormMode = "revin", affine: bool = False,
                 eps: float = 1e-5) -> None:
        super().__init__()
        if not isinstance(n_channels, int) or isinstance(n_channels, bool) or n_channels < 1:
            raise ValueError(f"InstanceNorm: n_channels must be a positive int, got {n_channels!r}")
        if mode not in ("none", "last", "mean", "revin"):
            raise ValueError(f"InstanceNorm: mode must be 'none', 'last', 'mean' or 'revin', got {mode!r}")
        if not isinstance(affine, bool) or (affine and mode != "revin"):
            raise ValueError(f"InstanceNorm: affine must be a bool and needs mode='revin', got affine={affine!r}, "
                             f"mode={mode!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"InstanceNorm: eps must be a number > 0, got {eps!r}")
        self.n_channels, self.mode, self.eps = n_channels, mode, float(eps)
        self.weight = nn.Parameter(torch.ones(n_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(n_channels)) if affine else None

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        if x.dim() != 3 or x.shape[-1] != self.n_channels:
            raise ValueError(f"InstanceNorm: x must be (batch, lookback, {self.n_channels}), got {tuple(x.shape)}")
        if self.mode == "none":
            return x, None
        if self.mode == "last":
            loc, scale = x[:, -1:].detach(), torch.ones_like(x[:, -1:])
        elif self.mode == "mean":
            loc, scale = x.mean(1, keepdim=True).detach(), torch.ones_like(x[:, -1:])
        else:
            loc = x.mean(1, keepdim=True).detach()
            scale = torch.sqrt(x.var(1, keepdim=True, unbiased=False) + self.eps).detach()
        z = (x - loc) / scale
        if self.weight is not None:
            z = z * self.weight + self.bias
        return z, (loc, scale)

    def _check_last(self, y: Tensor, method: str) -> int:
        n = y.shape[-1]
        if y.dim() != 3 or not 1 <= n <= self.n_channels:
            raise ValueError(f"InstanceNorm.{method}: y must be (batch, length, n <= {self.n_channels}), "
                             f"got {tuple(y.shape)}")
        return n

    def apply(self, y: Tensor, stats: tuple[Tensor, Tensor] | None) -> Tensor:
        """Values y (batch, length, n) of the last n channels normalised with a window's stats (e.g. the
        true future, for a loss in the normalised space)."""
        n = self._check_last(y, "apply")
        if stats is None:
            return y
        loc, scale = stats
        z = (y - loc[..., -n:]) / scale[..., -n:]
        return z * self.weight[-n:] + self.bias[-n:] if self.weight is not None else z

    def inverse(self, y: Tensor, stats: tuple[Tensor, Tensor] | None) -> Tensor:
        """A forecast y (batch, horizon, n) of the last n channels mapped back with the window's stats."""
        n = self._check_last(y, "inverse")
        if stats is None:
            return y
        loc, scale = stats
        if self.weight is not None:
            y = (y - self.bias[-n:]) / (self.weight[-n:] + self.eps**2)
        return y * scale[..., -n:] + loc[..., -n:]


def split_channels(x: Tensor) -> Tensor:
    """(batch, length, C) -> (batch · C, length, 1): every channel a window of its own."""
    return rearrange(x, "b l c -> (b c) l 1")


def merge_channels(y: Tensor, n_channels: int) -> Tensor:
    """(batch · C, length, 1) -> (batch, length, C), the inverse of :func:`split_channels`."""
    return rearrange(y, "(b c) l 1 -> b l c", c=n_channels)
