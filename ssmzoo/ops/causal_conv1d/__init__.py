"""Depthwise causal conv1d with a conv state: ``causal_conv1d`` (whole sequence) and
``causal_conv1d_update`` (one step).

Backends, in ``auto``'s preference order: ``causal_conv1d``, the causal-conv1d package's CUDA kernel
(CUDA only, when installed; calls without conv states), ``conv`` (one grouped F.conv1d, conv.py),
``reference`` (a sum over taps, reference.py).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from ..dispatch import HALF_DTYPES, REAL_DTYPES, Capabilities, Dispatcher, Request, grad_needed
from .conv import causal_conv1d_conv
from .reference import ConvInputs, apply_activation, causal_conv1d_reference

ALL_FLOAT = REAL_DTYPES + HALF_DTYPES


def causal_conv1d_package(x: ConvInputs, *, output_final_state: bool = False) -> Tensor:
    """The causal-conv1d package's CUDA kernel (Tri Dao), for calls without conv states (its state
    interface wants channel-last layouts): registered without state capabilities."""
    if x.initial_state is not None or output_final_state:
        raise ValueError("causal_conv1d: the causal_conv1d backend takes no initial state and returns no final state")
    from causal_conv1d import causal_conv1d_fn  # imported on first use: CUDA machines only

    return causal_conv1d_fn(x.x, x.weight, x.bias, x.activation)


def _probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    x, w, b, s = (torch.randn(*shape, generator=g).to(device).requires_grad_()
                  for shape in ((1, 8, 5), (8, 4), (8,), (1, 8, 3)))
    return (ConvInputs(x, w, b, "silu", s if caps.initial_state else None),), {"output_final_state": caps.final_state}


dispatch = Dispatcher("causal_conv1d", causal_conv1d_reference, _probe_case)
dispatch.register("causal_conv1d", causal_conv1d_package, ("cuda",),
                  Capabilities(initial_state=False, final_state=False, dtypes=ALL_FLOAT),
                  available=lambda: importlib.util.find_spec("causal_conv1d") is not None)
dispatch.register("conv", causal_conv1d_conv, ("cpu", "cuda"), Capabilities(dtypes=ALL_FLOAT))
dispatch.register("reference", causal_conv1d_reference, ("cpu", "cuda"), Capabilities(dtypes=ALL_FLOAT))


def _check(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None, state: Tensor | None,
           state_name: str) -> None:
    if weight.dim() != 2:
        raise ValueError(f"causal_conv1d: weight must be (D, W), got shape {tuple(weight.shape)}")
    d, width = weight.shape
    if width < 1:
        raise ValueError("causal_conv1d: weight must have width W >= 1")
    if x.shape[1] != d:
        raise ValueError(f"causal_conv1d: x has {x.shape[1]} channels but weight has D={d}")
    if bias is not None and bias.shape != (d,):
        raise ValueError(f"causal_conv1d: bias must be (D={d},), got shape {tuple(bias.shape)}")
    if activation not in (None, "silu"):
        raise ValueError(f"causal_conv1d: activation must be None or 'silu', got {activation!r}")
    if state is not None and state.shape != (x.shape[0], d, width - 1):
        raise ValueError(
            f"causal_conv1d: {state_name} must be (batch={x.shape[0]}, D={d}, W-1={width - 1}), "
            f"got shape {tuple(state.shape)}"
        )


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
    *,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """y_t = act(bias + Σ_k weight[:, k] x̃_{t+k}) over x̃ = [initial_state, x].

    x (batch, D, L); weight (D, W); bias (D,); activation None or "silu"; initial_state
    (batch, D, W-1) = the last W-1 inputs before x (zeros for a fresh stream). Returns y
    (batch, D, L), or (y, final_state (batch, D, W-1)) with ``output_final_state``."""
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d: x must be (batch, D, L), got shape {tuple(x.shape)}")
    _check(x, weight, bias, activation, initial_state, "initial_state")
    request = Request(x.device, x.dtype, initial_state=initial_state is not None, final_state=output_final_state,
                      grad=grad_needed(x, weight, bias, initial_state))
    inputs = ConvInputs(x, weight, bias, activation, initial_state)
    return dispatch.choose(backend, request).fn(inputs, output_final_state=output_final_state)


def causal_conv1d_update(
    x_t: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = None,
) -> tuple[Tensor, Tensor]:
    """One step: x_t (batch, D), conv_state (batch, D, W-1) -> (y_t (batch, D), new_state)."""
    if x_t.dim() != 2:
        raise ValueError(f"causal_conv1d_update: x_t must be (batch, D), got shape {tuple(x_t.shape)}")
    _check(x_t, weight, bias, activation, conv_state, "conv_state")
    window = torch.cat([conv_state.to(x_t.dtype), x_t[..., None]], dim=-1)  # (batch, D, W)
    y = (window * weight).sum(-1)
    if bias is not None:
        y = y + bias
    return apply_activation(y, activation), window[..., 1:]


__all__ = ["ConvInputs", "causal_conv1d", "causal_conv1d_reference", "causal_conv1d_update", "dispatch"]
