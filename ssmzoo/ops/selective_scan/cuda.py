"""Our CUDA backend: csrc/selective_scan_cuda.cu (torch-free, C launchers) bound by
csrc/selective_scan_cuda_bind.cpp, built with torch.utils.cpp_extension on first use, on machines
with a CUDA device only. A failed build costs one warning; dispatch then falls back."""

from __future__ import annotations

from functools import cache
from types import ModuleType

import torch

from ..extension import load_extension
from .autograd import compiled_backend

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


# (x: ScanInputs, *, output_final_state=False), like every backend of this op
selective_scan_cuda = compiled_backend(extension)
