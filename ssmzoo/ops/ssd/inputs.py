"""One SSD call's inputs (:class:`SSDInputs`) and every check of them (:func:`check_ssd`; :func:`check_ssd_update`
for one token): a ValueError naming the argument before any backend sees the input."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..checks import boolean, floating, one_device, positive_int, segments_of, shape, states_expected
from ..segments import Segments

OP = "ssd"


class SSDInputs(NamedTuple):
    """x (batch, length, heads, headdim); dt (batch, length, heads); A (heads,); B, C (batch, length,
    groups, d_state); chunk_size: the chunked backends' chunk length; D (heads,) or (heads, headdim); z
    like x; dt_bias (heads,); dt_softplus, dt_limit: Δ = clamp(softplus?(dt + dt_bias), dt_limit);
    initial_state (batch, heads, headdim, d_state), or (num_docs, ...) with ``segments`` (packed
    documents, no state crossing a document start)."""

    x: Tensor
    dt: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    chunk_size: int = 256
    D: Tensor | None = None
    z: Tensor | None = None
    dt_bias: Tensor | None = None
    dt_softplus: bool = False
    dt_limit: tuple[float, float] = (0.0, math.inf)
    initial_state: Tensor | None = None
    segments: Segments | None = None


def _check_limit(op: str, dt_limit: object) -> None:
    if (not isinstance(dt_limit, (tuple, list)) or len(dt_limit) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in dt_limit)
            or math.isnan(dt_limit[0]) or math.isnan(dt_limit[1]) or dt_limit[0] > dt_limit[1]):
        raise ValueError(f"{op}: dt_limit must be a pair (low, high) of numbers with low <= high, got {dt_limit!r}")


def _check_head_params(op: str, heads: int, headdim: int, D: Tensor | None, dt_bias: Tensor | None) -> None:
    if D is not None and floating(op, "D", D).shape not in ((heads,), (heads, headdim)):
        raise ValueError(f"{op}: D must be (heads={heads},) or (heads, headdim={headdim}), got shape {shape(D)}")
    if dt_bias is not None and floating(op, "dt_bias", dt_bias).shape != (heads,):
        raise ValueError(f"{op}: dt_bias must be (heads={heads},), got shape {shape(dt_bias)}")


def check_ssd(x: SSDInputs) -> None:
    xs, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_state, segments = x
    if floating(OP, "x", xs).dim() != 4:
        raise ValueError(f"{OP}: x must be (batch, length, heads, headdim), got shape {shape(xs)}")
    batch, length, heads, headdim = xs.shape
    if 0 in xs.shape:
        raise ValueError(f"{OP}: x must have batch, length, heads, headdim >= 1, got shape {shape(xs)}")
    if floating(OP, "dt", dt).shape != (batch, length, heads):
        raise ValueError(f"{OP}: dt must be (batch={batch}, length={length}, heads={heads}), got shape {shape(dt)}")
    if floating(OP, "A", A).shape != (heads,):
        raise ValueError(f"{OP}: A must be (heads={heads},), got shape {shape(A)}")
    if (floating(OP, "B", B).dim() != 4 or B.shape[:2] != (batch, length) or B.shape[2] < 1 or heads % B.shape[2]
            or B.shape[3] < 1):
        raise ValueError(f"{OP}: B must be (batch={batch}, length={length}, groups, d_state) with groups "
                         f"dividing heads={heads}, got shape {shape(B)}")
    if floating(OP, "C", C).shape != B.shape:
        raise ValueError(f"{OP}: C must have B's shape {shape(B)}, got {shape(C)}")
    positive_int(OP, "chunk_size", chunk_size)
    _check_head_params(OP, heads, headdim, D, dt_bias)
    if z is not None and floating(OP, "z", z).shape != xs.shape:
        raise ValueError(f"{OP}: z must have x's shape {shape(xs)}, got {shape(z)}")
    boolean(OP, "dt_softplus", dt_softplus)
    _check_limit(OP, dt_limit)
    one_device(OP, dict(zip(SSDInputs._fields, x)), xs.device)
    segments = segments_of(OP, segments, batch, length, xs.device)
    lead, count = states_expected(segments, batch)
    if initial_state is not None and floating(OP, "initial_state", initial_state).shape != (count, heads, headdim,
                                                                                             B.shape[3]):
        raise ValueError(f"{OP}: initial_state must be ({lead}={count}, heads={heads}, headdim={headdim}, "
                         f"d_state={B.shape[3]}), got shape {shape(initial_state)}")


def check_ssd_update(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, state: Tensor, D: Tensor | None,
                     z: Tensor | None, dt_bias: Tensor | None, dt_softplus: bool, dt_limit: tuple[float, float]) -> None:
    op = "ssd_update"
    if floating(op, "x", x).dim() != 3:
        raise ValueError(f"{op}: x must be (batch, heads, headdim), got shape {shape(x)}")
    batch, heads, headdim = x.shape
    if floating(op, "dt", dt).shape != (batch, heads):
        raise ValueError(f"{op}: dt must be (batch={batch}, heads={heads}), got shape {shape(dt)}")
    if floating(op, "A", A).shape != (heads,):
        raise ValueError(f"{op}: A must be (heads={heads},), got shape {shape(A)}")
    if floating(op, "B", B).dim() != 3 or B.shape[0] != batch or B.shape[1] < 1 or heads % B.shape[1]:
        raise ValueError(f"{op}: B must be (batch={batch}, groups, d_state) with groups dividing heads={heads}, "
                         f"got shape {shape(B)}")
    if floating(op, "C", C).shape != B.shape:
        raise ValueError(f"{op}: C must have B's shape {shape(B)}, got {shape(C)}")
    if floating(op, "state", state).shape != (batch, heads, headdim, B.shape[2]):
        raise ValueError(f"{op}: state must be (batch={batch}, heads={heads}, headdim={headdim}, "
                         f"d_state={B.shape[2]}), got shape {shape(state)}")
    _check_head_params(op, heads, headdim, D, dt_bias)
    if z is not None and floating(op, "z", z).shape != x.shape:
        raise ValueError(f"{op}: z must have x's shape {shape(x)}, got {shape(z)}")
    boolean(op, "dt_softplus", dt_softplus)
    _check_limit(op, dt_limit)
    one_device(op, {"x": x, "dt": dt, "A": A, "B": B, "C": C, "state": state, "D": D, "z": z, "dt_bias": dt_bias})


def fake_ssd(inputs: SSDInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Empty outputs shaped and typed like the reference's (the custom operators' fake implementation)."""
    x = inputs.x
    y = x.new_empty(x.shape)
    if not output_final_state:
        return y
    batch, _, heads, headdim = x.shape
    states = batch if inputs.segments is None else inputs.segments.num_docs
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return y, x.new_empty(states, heads, headdim, inputs.B.shape[-1], dtype=dtype)
