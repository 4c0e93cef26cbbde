"""Depthwise causal conv1d with a conv state: ``causal_conv1d`` (whole sequence) and
``causal_conv1d_update`` (one step).

Backends, in ``auto``'s preference order: ``causal_conv1d`` package's CUDA kernel (CUDA only, when
installed; probed lazily), ``chunked`` (one grouped F.conv1d, conv.py; the name is the dispatch's
slot for the plain-PyTorch fast path), ``reference`` (a sum over taps, reference.py).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from ..dispatch import Backend, Dispatcher
from .conv import causal_conv1d_conv
from .reference import apply_activation, causal_conv1d_reference


def _causal_conv1d_package(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False):
    from causal_conv1d import causal_conv1d_fn  # imported lazily: CUDA machines only

    if initial_state is not None or return_final_state:
        # The package's state interface needs channel-last layouts; keep it simple and exact.
        return causal_conv1d_conv(x, weight, bias, activation, initial_state, return_final_state)
    return causal_conv1d_fn(x, weight, bias, activation)


def _probe_package(device: torch.device) -> None:
    x = torch.randn(1, 8, 5, device=device)
    w = torch.randn(8, 4, device=device)
    got = _causal_conv1d_package(x, w, None, "silu")
    want = causal_conv1d_reference(x, w, None, "silu")
    if not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
        raise RuntimeError("causal_conv1d package disagrees with the reference")


dispatch = Dispatcher("causal_conv1d")
dispatch.add(Backend("mamba_ssm", _causal_conv1d_package, ("cuda",),
                     available=lambda: importlib.util.find_spec("causal_conv1d") is not None,
                     probe=_probe_package))
dispatch.add(Backend("chunked", causal_conv1d_conv, ("cpu", "cuda")))
dispatch.add(Backend("reference", causal_conv1d_reference, ("cpu", "cuda")))


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
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """y_t = act(bias + Σ_k weight[:, k] x̃_{t+k}) over x̃ = [initial_state, x].

    x (batch, D, L); weight (D, W); bias (D,); activation None or "silu"; initial_state
    (batch, D, W-1) = the last W-1 inputs before x (zeros for a fresh stream). Returns y
    (batch, D, L), or (y, final_state (batch, D, W-1)) with ``return_final_state``."""
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d: x must be (batch, D, L), got shape {tuple(x.shape)}")
    _check(x, weight, bias, activation, initial_state, "initial_state")
    fn = dispatch.select(backend, x.device).fn
    return fn(x, weight, bias, activation, initial_state, return_final_state)


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


__all__ = ["causal_conv1d", "causal_conv1d_reference", "causal_conv1d_update", "dispatch"]
