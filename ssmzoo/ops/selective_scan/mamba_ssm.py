"""mamba-ssm's fused CUDA selective scan (Gu & Dao), used when that package is installed and the input
is on CUDA. Imported lazily: never at ssmzoo import time.

mamba-ssm's scan takes no initial state and its returned last state carries no gradient, so calls
that pass ``initial_state`` or ask for the final state go to our own CUDA kernel (or, failing that,
the chunked PyTorch scan) instead.
"""

from __future__ import annotations

import importlib.util

from torch import Tensor


def available() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None


def selective_scan_mamba_ssm(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    if initial_state is not None or return_final_state:
        from . import cuda
        from .chunked import selective_scan_chunked

        fallback = cuda.selective_scan_cuda if cuda.available() and A.shape[1] <= cuda.MAX_STATE \
            else selective_scan_chunked
        return fallback(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state)
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
