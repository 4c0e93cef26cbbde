"""The Cauchy kernel's inputs (:class:`CauchyInputs`) and every check of them (:func:`check_cauchy`)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..checks import one_device

OP = "cauchy"


class CauchyInputs(NamedTuple):
    """v, w (..., N) complex, broadcastable; z (L,) complex, same dtype, a constant (no gradient).
    The entry broadcasts v and w and flattens them to (M, N) before a backend sees them."""

    v: Tensor
    z: Tensor
    w: Tensor


def check_cauchy(x: CauchyInputs) -> torch.Size:
    """Checks ``x``; returns the broadcast shape of v and w (..., N)."""
    v, z, w = x
    for name, t in (("v", v), ("z", z), ("w", w)):
        if not isinstance(t, Tensor) or not t.is_complex():
            raise ValueError(f"{OP}: {name} must be a complex tensor, got {getattr(t, 'dtype', type(t))}")
    if not (v.dtype == z.dtype == w.dtype):
        raise ValueError(f"{OP}: v, z and w must share one dtype, got {v.dtype}, {z.dtype}, {w.dtype}")
    if z.dim() != 1 or z.shape[0] < 1:
        raise ValueError(f"{OP}: z must have shape (L,) with L >= 1, got {tuple(z.shape)}")
    if z.requires_grad:
        raise ValueError(f"{OP}: z is treated as a constant; pass z.detach()")
    try:
        shape = torch.broadcast_shapes(v.shape, w.shape)
    except RuntimeError as e:
        raise ValueError(f"{OP}: v {tuple(v.shape)} and w {tuple(w.shape)} must broadcast") from e
    if len(shape) < 1 or shape[-1] < 1:
        raise ValueError(f"{OP}: v and w need a last (state) dimension of size >= 1, got {tuple(shape)}")
    one_device(OP, x._asdict())
    return shape


def fake_cauchy(x: CauchyInputs) -> Tensor:
    """Empty output shaped and typed like the reference's (the custom operators' fake implementation)."""
    return x.v.new_empty(*x.v.shape[:-1], x.z.shape[-1])
