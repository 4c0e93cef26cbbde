"""Our CUDA backend: csrc/selective_scan_cuda.cu (torch-free, C launchers) bound by
csrc/selective_scan_cuda_bind.cpp, built with torch.utils.cpp_extension on first use, on machines
with a CUDA device only. A failed build costs one warning; dispatch then falls back."""

from __future__ import annotations

import warnings
from functools import cache
from types import ModuleType

import torch
from torch import Tensor

from ..extension import CSRC, build_dir
from .kernel import run_kernel

MAX_STATE = 64  # the kernel keeps the state in registers
SOURCES = ("selective_scan_cuda_bind.cpp", "selective_scan_cuda.cu")


@cache
def extension() -> ModuleType | None:
    if not torch.cuda.is_available():
        return None
    paths = [CSRC / s for s in SOURCES] + [CSRC / "selective_scan_cuda.h"]
    try:
        from torch.utils.cpp_extension import load

        return load(name="ssmzoo_selective_scan_cuda", sources=[str(p) for p in paths[:2]],
                    extra_include_paths=[str(CSRC)], extra_cflags=["-O3"], extra_cuda_cflags=["-O3"],
                    build_directory=str(build_dir("ssmzoo_selective_scan_cuda", paths)), verbose=False)
    except Exception as e:  # noqa: BLE001 - any compiler or loader failure: fall back, with one warning
        warnings.warn(f"ssmzoo: could not build the CUDA selective scan ({type(e).__name__}: {e}); "
                      "falling back to the next backend", stacklevel=2)
        return None


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
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    if A.shape[1] > MAX_STATE:
        raise ValueError(f"selective_scan: the cuda backend supports d_state <= {MAX_STATE}, got {A.shape[1]}")
    return run_kernel(extension(), u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                      return_final_state)
