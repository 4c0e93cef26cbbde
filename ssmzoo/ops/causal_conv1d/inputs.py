"""One causal conv's inputs (:class:`ConvInputs`) and every check of them (:func:`check_causal_conv1d`, and
:func:`check_causal_conv1d_update` for one step): a ValueError naming the argument before any backend runs."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ..checks import floating, one_device, segments_of, shape, states_expected
from ..segments import Segments

OP = "causal_conv1d"
ACTIVATIONS = (None, "silu")


class ConvInputs(NamedTuple):
    """One call's inputs, as every backend receives them: x (batch, D, L); weight (D, W); bias (D,);
    activation None or "silu"; initial_state (batch, D, W-1), or (num_docs, D, W-1) with ``segments``
    (packed documents: no tap reads across a document start; a document's first inputs see its own
    initial state, or zeros)."""

    x: Tensor
    weight: Tensor
    bias: Tensor | None = None
    activation: str | None = None
    initial_state: Tensor | None = None
    segments: Segments | None = None


def _check_taps(op: str, x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None) -> int:
    """The checks a whole sequence and one step share; returns the channels D."""
    if floating(op, "weight", weight).dim() != 2:
        raise ValueError(f"{op}: weight must be (D, W), got shape {shape(weight)}")
    d, width = weight.shape
    if width < 1:
        raise ValueError(f"{op}: weight must have width W >= 1")
    if floating(op, "x", x).shape[1] != d:
        raise ValueError(f"{op}: x has {x.shape[1]} channels but weight has D={d}")
    if bias is not None and floating(op, "bias", bias).shape != (d,):
        raise ValueError(f"{op}: bias must be (D={d},), got shape {shape(bias)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be None or 'silu', got {activation!r}")
    return d


def check_causal_conv1d(inputs: ConvInputs) -> None:
    x, weight, bias, activation, initial_state, segments = inputs
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"{OP}: x must be (batch, D, L), got shape {shape(x)}")
    d = _check_taps(OP, x, weight, bias, activation)
    one_device(OP, {"x": x, "weight": weight, "bias": bias, "initial_state": initial_state})
    batch, _, length = x.shape
    if length < 1:
        raise ValueError(f"{OP}: x must have length L >= 1, got shape {shape(x)}")
    segments = segments_of(OP, segments, batch, length, x.device)
    lead, count = states_expected(segments, batch)
    if initial_state is not None and floating(OP, "initial_state", initial_state).shape != (count, d, weight.shape[1] - 1):
        raise ValueError(f"{OP}: initial_state must be ({lead}={count}, D={d}, W-1={weight.shape[1] - 1}), "
                         f"got shape {shape(initial_state)}")


def check_causal_conv1d_update(x_t: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None,
                               activation: str | None) -> None:
    op = "causal_conv1d_update"
    if not isinstance(x_t, Tensor) or x_t.dim() != 2:
        raise ValueError(f"{op}: x_t must be (batch, D), got shape {shape(x_t)}")
    d = _check_taps(op, x_t, weight, bias, activation)
    want = (x_t.shape[0], d, weight.shape[1] - 1)
    if floating(op, "conv_state", conv_state).shape != want:
        raise ValueError(f"{op}: conv_state must be (batch={want[0]}, D={d}, W-1={want[2]}), "
                         f"got shape {shape(conv_state)}")
    one_device(op, {"x_t": x_t, "conv_state": conv_state, "weight": weight, "bias": bias})


def fake_causal_conv1d(x: ConvInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Empty outputs shaped and typed like the reference's (the custom operators' fake implementation)."""
    y = x.x.new_empty(x.x.shape)
    if not output_final_state:
        return y
    states = x.x.shape[0] if x.segments is None else x.segments.num_docs
    return y, x.x.new_empty(states, x.x.shape[1], x.weight.shape[-1] - 1)
