"""Depthwise causal conv1d with a conv state: ``causal_conv1d`` (whole sequence) and
``causal_conv1d_update`` (one step).

Backends, in ``auto``'s preference order: ``causal_conv1d``, the causal-conv1d package's CUDA kernel
(causal_conv1d.py; CUDA only, when installed; calls without conv states or packed documents), ``conv``
(one grouped F.conv1d, conv.py), ``reference`` (a sum over taps, reference.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..dispatch import HALF_DTYPES, REAL_DTYPES, Capabilities, Dispatcher, Request, grad_needed, register_op
from ..segments import Segments
from . import causal_conv1d as package
from .conv import causal_conv1d_conv
from .inputs import ConvInputs, check_causal_conv1d, check_causal_conv1d_update, fake_causal_conv1d
from .reference import apply_activation, causal_conv1d_reference

ALL_FLOAT = REAL_DTYPES + HALF_DTYPES


def _probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    x, w, b, s = (torch.randn(*shape, generator=g).to(device).requires_grad_()
                  for shape in ((1, 8, 5), (8, 4), (8,), (1, 8, 3)))
    return (ConvInputs(x, w, b, "silu", s if caps.initial_state else None),), {"output_final_state": caps.final_state}


dispatch = Dispatcher("causal_conv1d", causal_conv1d_reference, _probe_case, fake=fake_causal_conv1d)
dispatch.register("causal_conv1d", package.causal_conv1d_package, ("cuda",),
                  Capabilities(initial_state=False, final_state=False, dtypes=ALL_FLOAT), available=package.available,
                  opaque=True)
dispatch.register("conv", causal_conv1d_conv, ("cpu", "cuda"), Capabilities(dtypes=ALL_FLOAT, segments=True))
dispatch.register("reference", causal_conv1d_reference, ("cpu", "cuda"), Capabilities(dtypes=ALL_FLOAT, segments=True))


@register_op(dispatch)
def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
    *,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    segments: Segments | None = None,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """y_t = act(bias + Σ_k weight[:, k] x̃_{t+k}) over x̃ = [initial_state, x].

    x (batch, D, L); weight (D, W); bias (D,); activation None or "silu"; initial_state
    (batch, D, W-1) = the last W-1 inputs before x (zeros for a fresh stream). ``segments``
    (:class:`~ssmzoo.ops.segments.Segments` of (batch, L)): packed documents, no tap reading across a
    document start; states are then per document (num_docs, D, W-1). Returns y (batch, D, L), or
    (y, final_state (batch or num_docs, D, W-1)) with ``output_final_state``."""
    inputs = ConvInputs(x, weight, bias, activation, initial_state, segments)
    check_causal_conv1d(inputs)
    if segments is not None and segments.unpacked:
        inputs = inputs._replace(segments=None)
    request = Request(x.device, x.dtype, initial_state=initial_state is not None, final_state=output_final_state,
                      grad=grad_needed(x, weight, bias, initial_state), segments=inputs.segments is not None)
    return dispatch.choose(backend, request).fn(inputs, output_final_state=output_final_state)


def causal_conv1d_update(
    x_t: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
) -> tuple[Tensor, Tensor]:
    """One step: x_t (batch, D), conv_state (batch, D, W-1) -> (y_t (batch, D), new_state)."""
    check_causal_conv1d_update(x_t, conv_state, weight, bias, activation)
    window = torch.cat([conv_state.to(x_t.dtype), x_t[..., None]], dim=-1)  # (batch, D, W)
    y = (window * weight).sum(-1)
    if bias is not None:
        y = y + bias
    return apply_activation(y, activation), window[..., 1:]


__all__ = ["ConvInputs", "causal_conv1d", "causal_conv1d_reference", "causal_conv1d_update", "check_causal_conv1d",
           "dispatch"]
