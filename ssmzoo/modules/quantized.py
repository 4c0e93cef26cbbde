"""A linear layer whose weight is stored in fewer bytes for decoding (``LanguageModel.quantize``): int8 with one
scale per output row, or bfloat16. Its weight *is* the dequantized value: ``forward`` multiplies by it, and a fused
decoder takes the stored form (:meth:`QuantizedLinear.matrix`) and computes with the same value, so generation is
exact to this module's own forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.quantized import Int8Matrix, Matrix, dequantize, quantize_int8

MODES = ("int8", "bf16")


class QuantizedLinear(nn.Module):
    """``nn.Linear``'s interface (``weight``, ``bias``, ``in_features``, ``out_features``) over a stored matrix.

    Buffers: ``values`` (out, in) int8 or bfloat16, ``scale`` (out,) float32 for int8 (else empty); ``bias`` the
    original's values, a parameter of its own. ``weight`` is computed in the dtype of the model (an empty anchor buffer that follows
    ``.to(dtype)``; a bf16 ``values`` buffer follows it too, keeping its bf16 values exactly)."""

    def __init__(self, linear: nn.Linear, mode: str) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"QuantizedLinear: linear must be an nn.Linear, got {type(linear).__name__}")
        if mode not in MODES:
            raise ValueError(f"QuantizedLinear: mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.in_features, self.out_features = mode, linear.in_features, linear.out_features
        w = linear.weight.detach()
        if mode == "int8":
            m = quantize_int8(w)
            self.register_buffer("values", m.values)
            self.register_buffer("scale", m.scale)
        else:
            self.register_buffer("values", w.to(torch.bfloat16))
            self.register_buffer("scale", torch.empty(0))
        self.register_buffer("anchor", torch.empty(0, dtype=w.dtype, device=w.device))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def matrix(self) -> Matrix:
        """The stored form, as ops take it (``ssmzoo.ops.quantized``)."""
        return Int8Matrix(self.values, self.scale) if self.mode == "int8" else self.values

    @property
    def weight(self) -> Tensor:
        return dequantize(self.matrix(), self.anchor.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, dequantize(self.matrix(), x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " \
               f"mode={self.mode}"


def linear_matrix(module: nn.Module) -> Matrix:
    """A linear layer's weight as ops take it: the stored form of a :class:`QuantizedLinear`, else ``weight``."""
    return module.matrix() if isinstance(module, QuantizedLinear) else module.weight


__all__ = ["MODES", "QuantizedLinear", "linear_matrix"]
