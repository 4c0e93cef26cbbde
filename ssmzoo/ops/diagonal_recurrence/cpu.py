"""The C++ CPU backend: csrc/diagonal_recurrence_cpu.cpp (OpenMP), built on first use and cached."""

from __future__ import annotations

from types import ModuleType

from torch import Tensor

from ..extension import load_cpu_extension
from .inputs import RecurrenceInputs
from .kernel import run_kernels


def extension() -> ModuleType | None:
    return load_cpu_extension("ssmzoo_diagonal_recurrence_cpu", "diagonal_recurrence_cpu.cpp")


def available() -> bool:
    return extension() is not None


def diagonal_recurrence_cpu(inputs: RecurrenceInputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`diagonal_recurrence_reference`."""
    return run_kernels(extension(), inputs, output_final_state)
