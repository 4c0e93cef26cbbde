"""The companion kernel's inputs (:class:`CompanionInputs`) and every check of them (:func:`check_companion`)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..checks import one_device, positive_int

OP = "companion_kernel"


class CompanionInputs(NamedTuple):
    """a, b, c (..., d) real, broadcastable (A = S + a e_dᵀ; for the FFT form from c̃, c holds c̃); length ℓ."""

    a: Tensor
    b: Tensor
    c: Tensor
    length: int


def check_companion(x: CompanionInputs, op: str = OP) -> None:
    a, b, c, length = x
    for name, t in (("a", a), ("b", b), ("c", c)):
        if not isinstance(t, Tensor) or t.dim() < 1 or not t.is_floating_point():
            raise ValueError(f"{op}: {name} must be a real floating tensor (..., d), got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {getattr(t, 'shape', '')}")
    if not (a.shape[-1] == b.shape[-1] == c.shape[-1]):
        raise ValueError(f"{op}: a, b, c must share the state size d (last dim), got {a.shape[-1]}, {b.shape[-1]}, "
                         f"{c.shape[-1]}")
    positive_int(op, "length", length)
    try:
        torch.broadcast_shapes(a.shape, b.shape, c.shape)
    except RuntimeError as e:
        raise ValueError(f"{op}: a {tuple(a.shape)}, b {tuple(b.shape)} and c {tuple(c.shape)} must broadcast") from e
    one_device(op, {"a": a, "b": b, "c": c})
