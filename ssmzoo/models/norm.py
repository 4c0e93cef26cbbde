"""Normalisations over (batch, length, d_model) that respect right padding.

LayerNorm and RMSNorm (``ssmzoo.modules.RMSNorm``) act on each position alone, so padding cannot
reach the real tokens. Batch norm pools statistics over the batch and the length, so a plain
``BatchNorm1d`` would let the amount of padding (and whatever sits in it) change the real tokens'
outputs in training mode; :class:`MaskedBatchNorm` pools over the real positions only.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..layers.base import input_checks_enabled
from ..modules.rmsnorm import RMSNorm


class MaskedBatchNorm(nn.Module):
    """Batch norm over channels of x (batch, length, d_model), with statistics over real positions.

    Training: mean and (biased) variance over the positions where ``mask`` (batch, length) is True,
    and running estimates updated with the unbiased variance, as ``nn.BatchNorm1d`` does.
    Evaluation: the running estimates. Without a mask every position counts, which equals
    ``nn.BatchNorm1d`` on ``x.transpose(1, 2)``.
    """

    def __init__(self, d_model: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))
        self.register_buffer("running_mean", torch.zeros(d_model))
        self.register_buffer("running_var", torch.ones(d_model))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.training:
            if mask is None:
                mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            w = mask.to(x.dtype)[..., None]  # (B, L, 1)
            count = w.sum()
            if input_checks_enabled(x.device) and count < 2:  # a value check: a device sync on GPU
                raise ValueError(
                    f"MaskedBatchNorm: training needs at least 2 real positions in the batch, got {int(count)}"
                )
            # where() rather than a product, so NaN/inf in the padding cannot leak into the sums.
            xr = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
            mean = xr.sum((0, 1)) / count
            var = ((xr - mean) * w).pow(2).sum((0, 1)) / count
            with torch.no_grad():
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean.detach().to(self.running_mean.dtype))
                unbiased = var.detach() * count / (count - 1)
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        else:
            mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


NormKind = Literal["layer", "batch", "rms"]


def build_norm(kind: str, d_model: int) -> nn.Module:
    """The normalisation named ``kind``; apply it with :func:`apply_norm`."""
    if kind == "layer":
        return nn.LayerNorm(d_model)
    if kind == "batch":
        return MaskedBatchNorm(d_model)
    if kind == "rms":
        return RMSNorm(d_model, eps=1e-6)
    raise ValueError(f"norm must be 'layer', 'batch' or 'rms', got {kind!r}")


def apply_norm(norm: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
    """norm(x); batch norm also gets the padding mask (batch, length); the per-position norms need none."""
    return norm(x, mask) if isinstance(norm, MaskedBatchNorm) else norm(x)
