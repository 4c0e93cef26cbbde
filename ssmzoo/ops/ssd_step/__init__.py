"""One token of SSD, Mamba-2's recurrent mode: ``ssd_step(x, dt, A, B, C, state, ...)`` -> (y, next state), the
contract of ``ssmzoo.ops.ssd.ssd_update`` behind a dispatch, so generation takes the fused kernel.

Backends, in ``auto``'s preference order: ``cpu`` (cpu.py: the state read and written once, CPU, float32 and
float64, no gradient), ``reference`` (reference.py: ``ssd_update``'s PyTorch formulas). At a 100M-parameter
Mamba-2 shape (24 heads of 64 channels, d_state 128) and batch 8 the PyTorch step spent about twice as long on
the state as the layer's two projections (see benchmarks/speed/hybrids.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..dispatch import HALF_DTYPES, REAL_DTYPES, Capabilities, Dispatcher, Request, grad_needed, register_op
from .cpu import available as cpp_available
from .cpu import ssd_step_cpu
from .inputs import SsdStepInputs, check_ssd_step, fake_ssd_step
from .reference import ssd_step_reference


def _probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    batch, heads, p, groups, n = 2, 4, 3, 2, 5
    t = lambda *s: torch.randn(*s, generator=g).to(device).requires_grad_(caps.grad)  # noqa: E731
    inputs = SsdStepInputs(t(batch, heads, p), t(batch, heads), -t(heads).abs(), t(batch, groups, n),
                           t(batch, groups, n), t(batch, heads, p, n), D=t(heads, p), z=t(batch, heads, p),
                           dt_bias=t(heads), dt_softplus=True, dt_limit=(0.01, 2.0))
    return (inputs,), {}


dispatch = Dispatcher("ssd_step", ssd_step_reference, _probe_case, fake=fake_ssd_step, rtol=1e-4, atol=1e-5)
dispatch.register("cpu", ssd_step_cpu, ("cpu",), Capabilities(grad=False), available=cpp_available, opaque=True)
dispatch.register("reference", ssd_step_reference, ("cpu", "cuda"), Capabilities(dtypes=REAL_DTYPES + HALF_DTYPES))


@register_op(dispatch)
def ssd_step(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    state: Tensor,
    *,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """One step of :func:`ssmzoo.ops.ssd.ssd` (shapes and dtypes as ``ssd_update``'s): x (batch, heads, headdim),
    dt (batch, heads), A (heads,), B, C (batch, groups, d_state), state (batch, heads, headdim, d_state) ->
    (y like x, the next state)."""
    inputs = SsdStepInputs(x, dt, A, B, C, state, D, z, dt_bias, dt_softplus, dt_limit)
    check_ssd_step(inputs)
    # The kernel computes in the state's dtype: float32 for float32 and half inputs, float64 for float64.
    compute = torch.promote_types(x.dtype, torch.float32)
    request = Request(x.device, compute, initial_state=True, final_state=True,
                      grad=grad_needed(x, dt, A, B, C, state, D, z, dt_bias))
    return dispatch.choose(backend, request).fn(inputs)


__all__ = ["SsdStepInputs", "check_ssd_step", "dispatch", "ssd_step", "ssd_step_cpu", "ssd_step_reference"]
