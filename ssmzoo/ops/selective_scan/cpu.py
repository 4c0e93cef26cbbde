"""The C++ CPU backend: csrc/selective_scan_cpu.cpp, built on first use and cached."""

from __future__ import annotations

from types import ModuleType

from torch import Tensor

from ..extension import load_cpu_extension
from .kernel import run_kernel

MAX_STATE = 256  # the kernel's stack array for the state


def extension() -> ModuleType | None:
    return load_cpu_extension("ssmzoo_selective_scan_cpu", "selective_scan_cpu.cpp")


def available() -> bool:
    return extension() is not None


def selective_scan_cpu(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    *,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    return run_kernel(extension(), u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                      output_final_state)
