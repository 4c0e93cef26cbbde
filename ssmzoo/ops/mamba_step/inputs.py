"""One token of the Mamba layer: its inputs (:class:`MambaStepWeights`, :class:`MambaStepInputs`) and every check
of them (:func:`check_mamba_step`; shapes only, as cheap as a token's step allows)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ..checks import shape
from ..mamba_inner.inputs import MambaInnerWeights, State

OP = "mamba_step"


class MambaStepWeights(NamedTuple):
    """The layer's parameters for a step: in_proj, the inner weights, out_proj (biases may be None)."""

    in_proj_weight: Tensor
    in_proj_bias: Tensor | None
    inner: MambaInnerWeights
    out_proj_weight: Tensor
    out_proj_bias: Tensor | None


class MambaStepInputs(NamedTuple):
    """x_t (batch, d_model); state (conv_state (batch, D, W-1), ssm_state (batch, D, N)); the weights."""

    x_t: Tensor
    state: State
    weights: MambaStepWeights


def check_mamba_step(x: MambaStepInputs) -> None:
    x_t, state, w = x
    d, width = w.inner.conv_weight.shape
    n = w.inner.A_log.shape[1]
    if not isinstance(x_t, Tensor) or x_t.dim() != 2 or w.in_proj_weight.shape != (2 * d, x_t.shape[1]):
        raise ValueError(f"{OP}: x_t must be (batch, d_model) with in_proj_weight (2·D = {2 * d}, d_model), got x_t "
                         f"{shape(x_t)} and in_proj_weight {shape(w.in_proj_weight)}")
    batch = x_t.shape[0]
    shapes = [tuple(s.shape) if isinstance(s, Tensor) else None for s in state] if isinstance(state, (tuple, list)) \
        else None
    if shapes != [(batch, d, width - 1), (batch, d, n)]:
        got = f"({', '.join(shape(s) for s in state)})" if isinstance(state, (tuple, list)) else type(state).__name__
        raise ValueError(f"{OP}: state must be (conv_state (batch={batch}, D={d}, W-1={width - 1}), ssm_state "
                         f"(batch={batch}, D={d}, N={n})), got {got}")


def fake_mamba_step(x: MambaStepInputs) -> tuple[Tensor, State]:
    """Empty outputs shaped and typed like the reference's (the custom operators' fake implementation)."""
    conv_state, h = x.state
    return x.x_t.new_empty(x.x_t.shape), (conv_state.new_empty(conv_state.shape), h.new_empty(h.shape))
