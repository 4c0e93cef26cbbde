"""The C++ CPU backend: csrc/selective_scan_cpu.cpp, built on first use and cached."""

from __future__ import annotations

from types import ModuleType

from ..extension import load_cpu_extension
from .autograd import compiled_backend

MAX_STATE = 256  # the kernel's stack array for the state


def extension() -> ModuleType | None:
    return load_cpu_extension("ssmzoo_selective_scan_cpu", "selective_scan_cpu.cpp", headers=("cpu_math.h",))


def available() -> bool:
    return extension() is not None


# (x: ScanInputs, *, output_final_state=False), like every backend of this op
selective_scan_cpu = compiled_backend(extension)
