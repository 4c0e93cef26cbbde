"""The C++ CPU backend: csrc/ssd_step_cpu.cpp updates the state and forms y in one pass over it (OpenMP over
batch x heads); the discretisation of Δ (batch x heads numbers) and the gate stay in PyTorch. No backward: it
serves generation. Built on first use, cached."""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from ..extension import load_cpu_extension
from ..ssd.reference import discretize_dt
from .inputs import SsdStepInputs


def extension() -> ModuleType | None:
    return load_cpu_extension("ssmzoo_ssd_step_cpu", "ssd_step_cpu.cpp")


def available() -> bool:
    return extension() is not None


def ssd_step_cpu(inputs: SsdStepInputs) -> tuple[Tensor, Tensor]:
    """The reference's contract (same dtypes, same shapes), the state pass in C++."""
    i = inputs
    dtype = torch.promote_types(i.x.dtype, torch.float32)
    delta = discretize_dt(i.dt.to(dtype), i.dt_bias, i.dt_softplus, i.dt_limit)  # (batch, heads)
    decay = torch.exp(delta * i.A.to(dtype))
    D = i.D.to(dtype).contiguous() if i.D is not None else i.x.new_empty(0, dtype=dtype)
    y, state = extension().step(i.x.to(dtype).contiguous(), delta.contiguous(), decay.contiguous(),
                                i.B.to(dtype).contiguous(), i.C.to(dtype).contiguous(),
                                i.state.to(dtype).contiguous(), D)
    if i.z is not None:
        y = y * F.silu(i.z.to(dtype))
    return y.to(i.x.dtype), state
