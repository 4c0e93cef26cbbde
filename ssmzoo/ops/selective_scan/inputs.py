"""One selective scan's inputs (:class:`ScanInputs`) and every check of them (:func:`check_selective_scan`):
a clear ValueError naming the argument, before any backend sees the input."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ..checks import floating, one_device, segments_of, shape, states_expected
from ..segments import Segments

OP = "selective_scan"


class ScanInputs(NamedTuple):
    """One selective scan's inputs, as every backend receives them.

    u, delta (batch, D, L); A (D, N) real; B, C (D, N), (batch, N, L) or (batch, G, N, L) with G
    dividing D; D (D,); z (batch, D, L) gates the output by silu(z); delta_bias (D,) is added to
    delta before the optional softplus; initial_state (batch, D, N), or (num_docs, D, N) with
    ``segments`` (packed documents: the state restarts at every document start, from that
    document's initial state or zero)."""

    u: Tensor
    delta: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor | None = None
    z: Tensor | None = None
    delta_bias: Tensor | None = None
    delta_softplus: bool = False
    initial_state: Tensor | None = None
    segments: Segments | None = None


def check_selective_scan(x: ScanInputs) -> None:
    u, delta, A, B, C, D, z, delta_bias, _, initial_state, segments = x
    floating(OP, "u", u)
    if u.dim() != 3:
        raise ValueError(f"{OP}: u must be (batch, D, L), got shape {shape(u)}")
    batch, d_inner, length = u.shape
    if length < 1:
        raise ValueError(f"{OP}: u must have length L >= 1")
    if floating(OP, "delta", delta).shape != u.shape:
        raise ValueError(f"{OP}: delta must have u's shape {shape(u)}, got {shape(delta)}")
    if floating(OP, "A", A).dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"{OP}: A must be (D={d_inner}, N), got shape {shape(A)}")
    d_state = A.shape[1]
    for name, BC in (("B", B), ("C", C)):
        floating(OP, name, BC)
        if BC.dim() == 2:
            ok = BC.shape == (d_inner, d_state)
        elif BC.dim() == 3:
            ok = BC.shape == (batch, d_state, length)
        elif BC.dim() == 4:
            ok = BC.shape[0] == batch and BC.shape[2:] == (d_state, length) and BC.shape[1] >= 1 \
                and d_inner % BC.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"{OP}: {name} must be (D={d_inner}, N={d_state}), (batch={batch}, N, L={length}) or "
                f"(batch, G, N, L) with G dividing D; got shape {shape(BC)}"
            )
    for name, vec in (("D", D), ("delta_bias", delta_bias)):
        if vec is not None and floating(OP, name, vec).shape != (d_inner,):
            raise ValueError(f"{OP}: {name} must be (D={d_inner},), got shape {shape(vec)}")
    if z is not None and floating(OP, "z", z).shape != u.shape:
        raise ValueError(f"{OP}: z must have u's shape {shape(u)}, got {shape(z)}")
    one_device(OP, dict(zip(ScanInputs._fields, x)))
    segments = segments_of(OP, segments, batch, length, u.device)
    lead, count = states_expected(segments, batch)
    if initial_state is not None and floating(OP, "initial_state", initial_state).shape != (count, d_inner, d_state):
        raise ValueError(f"{OP}: initial_state must be ({lead}={count}, D={d_inner}, N={d_state}), "
                         f"got shape {shape(initial_state)}")


def fake_selective_scan(x: ScanInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Empty outputs shaped and typed like the reference's (the custom operators' fake implementation)."""
    y = x.u.new_empty(x.u.shape)
    if not output_final_state:
        return y
    states = x.u.shape[0] if x.segments is None else x.segments.num_docs
    return y, x.u.new_empty(states, x.u.shape[1], x.A.shape[1])
