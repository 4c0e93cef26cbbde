"""The Cauchy kernel by pykeops reductions (CPU or GPU), forward and backward formulas, O(N + L)
memory. pykeops is imported on first use only (the optional ``[keops]`` extra)."""

from __future__ import annotations

import importlib.util
from functools import cache

import torch
from torch import Tensor

from .inputs import CauchyInputs


def available() -> bool:
    return importlib.util.find_spec("pykeops") is not None


@cache
def _keops_reductions():
    """(forward, backward) Genred reductions; complex numbers as real 2-vectors (re, im)."""
    from pykeops.torch import Genred

    # forward: reduce over n (j) for each position l (i).
    fwd = Genred(
        "ComplexDivide(v, z - w) + ComplexDivide(Conj(v), z - Conj(w))",
        ["z = Vi(2)", "v = Vj(2)", "w = Vj(2)"],
        reduction_op="Sum",
        axis=1,
    )
    # backward: reduce over l (j) for each state entry n (i); output [S1, S2] side by side.
    t1 = "ComplexDivide(h, z - w)"
    t2 = "ComplexDivide(Conj(h), Conj(z) - w)"
    bwd = Genred(
        f"Concat({t1} + {t2}, ComplexDivide({t1}, z - w) + ComplexDivide({t2}, Conj(z) - w))",
        ["w = Vi(2)", "z = Vj(2)", "h = Vj(2)"],
        reduction_op="Sum",
        axis=1,
    )
    return fwd, bwd


def _as_pairs(x: Tensor) -> Tensor:
    return torch.view_as_real(x.resolve_conj().contiguous()).contiguous()


class _KeopsCauchy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: Tensor, z: Tensor, w: Tensor) -> Tensor:
        fwd, _ = _keops_reductions()
        m = v.shape[0]
        zb = _as_pairs(z).expand(m, -1, -1).contiguous()  # (M, L, 2): batch dims must match exactly
        out = fwd(zb, _as_pairs(v), _as_pairs(w))
        ctx.save_for_backward(v, z, w)
        return torch.view_as_complex(out.contiguous())

    @staticmethod
    def backward(ctx, grad: Tensor):
        _, bwd = _keops_reductions()
        v, z, w = ctx.saved_tensors
        m = v.shape[0]
        zb = _as_pairs(z).expand(m, -1, -1).contiguous()
        sums = bwd(_as_pairs(w), zb, _as_pairs(grad.conj()))  # (M, N, 4)
        s1 = torch.view_as_complex(sums[..., :2].contiguous())
        s2 = torch.view_as_complex(sums[..., 2:].contiguous())
        return s1.conj(), None, (v * s2).conj()


def cauchy_keops(x: CauchyInputs) -> Tensor:
    """v, w (M, N), z (L,) -> (M, L) with pykeops reductions (CPU or GPU), O(N + L) memory."""
    return _KeopsCauchy.apply(x.v, x.z, x.w)
