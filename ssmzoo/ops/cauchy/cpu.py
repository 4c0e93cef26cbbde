"""The Cauchy kernel by csrc/cauchy.cpp: OpenMP forward and backward kernels, no intermediate (CPU)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..extension import load_cpu_extension
from .inputs import CauchyInputs


def extension():
    return load_cpu_extension("ssmzoo_cauchy", "cauchy.cpp")


class _CppCauchy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: Tensor, z: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(v, z, w)
        return extension().forward(v, z, w)

    @staticmethod
    def backward(ctx, grad: Tensor):
        v, z, w = ctx.saved_tensors
        grad_v, grad_w = extension().backward(v, z, w, grad.contiguous())
        return grad_v, None, grad_w


def cauchy_cpu(x: CauchyInputs) -> Tensor:
    """v, w (M, N), z (L,) -> (M, L) with the OpenMP kernels of csrc/cauchy.cpp (CPU)."""
    return _CppCauchy.apply(x.v.contiguous(), x.z.contiguous(), x.w.contiguous())


def available() -> bool:
    return extension() is not None
