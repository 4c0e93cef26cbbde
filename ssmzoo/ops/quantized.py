"""Weights stored in fewer bytes for decoding, where reading every weight once per token bounds the speed:
``Int8Matrix`` (weight-only int8 with one float32 scale per output row, symmetric) and plain bfloat16 tensors.
A matrix's value is what :func:`dequantize` returns; every op that takes one computes with exactly that value
(its reference through :func:`linear`, the C++ step from packed panels, the scale applied to each row's sum)."""

from __future__ import annotations

from typing import NamedTuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor


class Int8Matrix(NamedTuple):
    """W ≈ values · scale[:, None]: values (N, K) int8 in [-127, 127], scale (N,) float32 > 0."""

    values: Tensor
    scale: Tensor

    @property
    def shape(self) -> torch.Size:
        return self.values.shape


# A matrix an op may take: a floating tensor (any dtype; bfloat16 for bf16 weights) or an int8 one.
Matrix = Union[Tensor, Int8Matrix]


def quantize_int8(weight: Tensor) -> Int8Matrix:
    """Per-row symmetric int8: scale = max|W_row| / 127 (1 for an all-zero row), values = round(W / scale)."""
    if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"quantize_int8: weight must be a 2-D floating tensor, got "
                         f"{getattr(weight, 'dtype', type(weight).__name__)} of shape {tuple(getattr(weight, 'shape', ()))}")
    w = weight.detach().float()
    peak = w.abs().amax(dim=1)
    if not torch.isfinite(peak).all():
        raise ValueError("quantize_int8: weight has NaN or inf entries")
    scale = torch.where(peak > 0, peak / 127.0, torch.ones_like(peak))
    values = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return Int8Matrix(values, scale)


def dequantize(matrix: Matrix, dtype: torch.dtype) -> Tensor:
    """The matrix's value in ``dtype`` (float64 exactly; float32 values · scale rounded once)."""
    if isinstance(matrix, Int8Matrix):
        return matrix.values.to(dtype) * matrix.scale.to(dtype)[:, None]
    return matrix.to(dtype)


def linear(x: Tensor, matrix: Matrix, bias: Tensor | None = None) -> Tensor:
    """x Wᵀ (+ bias) in x's dtype with W = dequantize(matrix)."""
    return F.linear(x, dequantize(matrix, x.dtype), None if bias is None else bias.to(x.dtype))


__all__ = ["Int8Matrix", "Matrix", "dequantize", "linear", "quantize_int8"]
