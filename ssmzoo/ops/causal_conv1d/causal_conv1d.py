"""The causal-conv1d package's CUDA kernel (Tri Dao), used when that package is installed and the input is
on CUDA. Imported on first call only. Registered without states and without packed documents (its state
and ``seq_idx`` interfaces want channel-last layouts), so calls that need them go to another backend."""

from __future__ import annotations

import importlib.util

from torch import Tensor

from .inputs import ConvInputs


def available() -> bool:
    return importlib.util.find_spec("causal_conv1d") is not None


def causal_conv1d_package(x: ConvInputs, *, output_final_state: bool = False) -> Tensor:
    if x.initial_state is not None or output_final_state or x.segments is not None:
        raise ValueError("causal_conv1d: the causal_conv1d backend takes no initial state, returns no final state "
                         "and takes no segments")
    from causal_conv1d import causal_conv1d_fn  # imported on first use: CUDA machines only

    return causal_conv1d_fn(x.x, x.weight, x.bias, x.activation)
