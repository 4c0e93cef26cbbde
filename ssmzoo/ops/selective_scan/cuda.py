"""Our CUDA backend: csrc/selective_scan_cuda.cu (torch-free, C launchers) bound by
csrc/selective_scan_cuda_bind.cpp, built with torch.utils.cpp_extension on first use, on machines
with a CUDA device only. A failed build costs one warning; dispatch then falls back."""

from __future__ import annotations

from functools import cache
from types import ModuleType

import torch
from torch import Tensor

from ..extension import load_extension
from .kernel import run_kernel

MAX_STATE = 64  # the kernel keeps the state in registers
SOURCES = ("selective_scan_cuda_bind.cpp", "selective_scan_cuda.cu")


@cache
def extension() -> ModuleType | None:
    if not torch.cuda.is_available():
        return None
    return load_extension("ssmzoo_selective_scan_cuda", SOURCES, headers=("selective_scan_cuda.h",),
                          extra_cflags=["-O3"], extra_cuda_cflags=["-O3"])


def available() -> bool:
    return extension() is not None


def selective_scan_cuda(
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
