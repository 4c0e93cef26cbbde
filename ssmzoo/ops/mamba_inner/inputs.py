"""Mamba's inner block's inputs (:class:`MambaInnerWeights`, :class:`MambaInnerInputs`) and every check of
them (:func:`check_mamba_inner`): a ValueError naming the argument before any backend runs."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ..checks import floating, one_device, segments_of, shape, states_expected
from ..segments import Segments

OP = "mamba_inner"
State = tuple[Tensor, Tensor]


class MambaInnerWeights(NamedTuple):
    """One direction's parameters (mamba-ssm's names): conv_weight (D, W), conv_bias (D,) or None,
    x_proj_weight (R + 2N, D), dt_proj_weight (D, R), dt_proj_bias (D,), A_log (D, N), D (D,)."""

    conv_weight: Tensor
    conv_bias: Tensor | None
    x_proj_weight: Tensor
    dt_proj_weight: Tensor
    dt_proj_bias: Tensor
    A_log: Tensor
    D: Tensor


class MambaInnerInputs(NamedTuple):
    """xz (batch, length, 2·D); initial_state (conv_state (batch, D, W-1) or None, ssm_state (batch, D, N)
    or None), or None; with ``segments`` (packed documents) the states are per document (num_docs, ...).
    scan_backend / conv_backend: the backends the unfused form asks of the two ops."""

    xz: Tensor
    weights: MambaInnerWeights
    initial_state: tuple[Tensor | None, Tensor | None] | None = None
    segments: Segments | None = None
    scan_backend: str | None = None
    conv_backend: str | None = None


def check_mamba_inner(x: MambaInnerInputs) -> None:
    xz, w, initial_state, segments = x.xz, x.weights, x.initial_state, x.segments
    if not isinstance(w, MambaInnerWeights):
        raise ValueError(f"{OP}: weights must be a MambaInnerWeights, got {type(w).__name__}")
    if floating(OP, "conv_weight", w.conv_weight).dim() != 2 or w.conv_weight.shape[1] < 1:
        raise ValueError(f"{OP}: conv_weight must be (D, W) with W >= 1, got shape {shape(w.conv_weight)}")
    d_inner, width = w.conv_weight.shape
    if floating(OP, "A_log", w.A_log).dim() != 2 or w.A_log.shape[0] != d_inner:
        raise ValueError(f"{OP}: A_log must be (D={d_inner}, N), got shape {shape(w.A_log)}")
    n = w.A_log.shape[1]
    if floating(OP, "dt_proj_weight", w.dt_proj_weight).dim() != 2 or w.dt_proj_weight.shape[0] != d_inner:
        raise ValueError(f"{OP}: dt_proj_weight must be (D={d_inner}, R), got shape {shape(w.dt_proj_weight)}")
    rank = w.dt_proj_weight.shape[1]
    if floating(OP, "x_proj_weight", w.x_proj_weight).shape != (rank + 2 * n, d_inner):
        raise ValueError(f"{OP}: x_proj_weight must be (R + 2N = {rank + 2 * n}, D={d_inner}), "
                         f"got shape {shape(w.x_proj_weight)}")
    for name, vec in (("conv_bias", w.conv_bias), ("dt_proj_bias", w.dt_proj_bias), ("D", w.D)):
        if (vec is not None or name != "conv_bias") and floating(OP, name, vec).shape != (d_inner,):
            raise ValueError(f"{OP}: {name} must be (D={d_inner},), got shape {shape(vec)}")
    if floating(OP, "xz", xz).dim() != 3 or xz.shape[-1] != 2 * d_inner or 0 in xz.shape:
        raise ValueError(f"{OP}: xz must be (batch, length, 2·D) with D = {d_inner} and batch, length >= 1, "
                         f"got shape {shape(xz)}")
    batch, length, _ = xz.shape
    segments = segments_of(OP, segments, batch, length, xz.device)
    conv_state, ssm_state = initial_state if initial_state is not None else (None, None)
    lead, count = states_expected(segments, batch)
    if conv_state is not None and floating(OP, "conv_state", conv_state).shape != (count, d_inner, width - 1):
        raise ValueError(f"{OP}: conv_state must be ({lead}={count}, D={d_inner}, W-1={width - 1}), "
                         f"got shape {shape(conv_state)}")
    if ssm_state is not None and floating(OP, "ssm_state", ssm_state).shape != (count, d_inner, n):
        raise ValueError(f"{OP}: ssm_state must be ({lead}={count}, D={d_inner}, N={n}), got shape {shape(ssm_state)}")
    one_device(OP, {"xz": xz, **w._asdict(), "conv_state": conv_state, "ssm_state": ssm_state})


def fake_mamba_inner(x: MambaInnerInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, State]:
    """Empty outputs shaped and typed like the reference's (the custom operators' fake implementation)."""
    batch, length, two_d = x.xz.shape
    y = x.xz.new_empty(batch, length, two_d // 2)
    if not output_final_state:
        return y
    states = batch if x.segments is None else x.segments.num_docs
    w = x.weights
    return y, (x.xz.new_empty(states, two_d // 2, w.conv_weight.shape[-1] - 1),
               x.xz.new_empty(states, two_d // 2, w.A_log.shape[1]))
