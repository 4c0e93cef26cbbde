"""mamba-ssm's fused CUDA selective scan (Gu & Dao), used when that package is installed and the input
is on CUDA. Imported on first call only: never at ssmzoo import time.

mamba-ssm's scan takes no initial state and its returned last state carries no gradient, so this
backend is registered without those capabilities: the dispatch sends calls that need them to
another backend, and ``auto`` picks this one only for calls that need neither (Mamba's forward when
nobody asked for the state).
"""

from __future__ import annotations

import importlib.util

from torch import Tensor

from .inputs import ScanInputs


def available() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None


def selective_scan_mamba_ssm(x: ScanInputs, *, output_final_state: bool = False) -> Tensor:
    if x.initial_state is not None or output_final_state:
        raise ValueError("selective_scan: the mamba_ssm backend takes no initial state and returns no final state")
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(x.u, x.delta, x.A, x.B, x.C, x.D, x.z, x.delta_bias, x.delta_softplus)
