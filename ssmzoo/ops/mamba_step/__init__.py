"""One token of the whole Mamba layer: ``mamba_step(x_t, state, weights)`` -> (out, next state).

Backends, in ``auto``'s preference order: ``cpu`` (cpu.py: one C++ call, no gradient, CPU),
``reference`` (reference.py: the PyTorch formulas).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..dispatch import (HALF_DTYPES, REAL_DTYPES, Capabilities, Dispatcher, Request, autocast_dtype, autocast_off,
                        grad_needed, register_op, state_at_most)
from ..mamba_inner import MambaInnerWeights, State
from ..mamba_inner import available as cpu_available
from ..mamba_inner.cpu import MAX_STATE
from .cpu import mamba_step_cpu
from .inputs import MambaStepInputs, MambaStepWeights, check_mamba_step, fake_mamba_step
from .reference import mamba_step_reference


def _step_probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    batch, d_model, d, n, rank, width = 2, 3, 4, 2, 1, 3
    t = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    inner = MambaInnerWeights(t(d, width), t(d), t(rank + 2 * n, d), t(d, rank), t(d), t(d, n) * 0.5, t(d))
    w = MambaStepWeights(t(2 * d, d_model), t(2 * d), inner, t(d_model, d), None)
    return (MambaStepInputs(t(batch, d_model), (t(batch, d, width - 1), t(batch, d, n)), w),), {}


dispatch = Dispatcher("mamba_step", mamba_step_reference, _step_probe_case, fake=fake_mamba_step, rtol=1e-4, atol=1e-5)
dispatch.register("cpu", mamba_step_cpu, ("cpu",), Capabilities(grad=False), available=cpu_available,
                  accepts=state_at_most(MAX_STATE), opaque=True)
dispatch.register("reference", mamba_step_reference, ("cpu", "cuda"),
                  Capabilities(dtypes=REAL_DTYPES + HALF_DTYPES))


@register_op(dispatch)
def mamba_step(x_t: Tensor, state: State, weights: MambaStepWeights, *,
               backend: str | None = None) -> tuple[Tensor, State]:
    """One token of the Mamba layer: x_t (batch, d_model) -> (out (batch, d_model), next state)."""
    if autocast_dtype(x_t.device) is not None:
        # Under autocast a state from forward may hold half-precision values beside float32 weights: the step
        # computes in float32 with autocast off (the state comes out float32).
        def up(t: Tensor) -> Tensor:
            return t.float() if t.dtype in HALF_DTYPES else t

        with autocast_off(x_t.device):
            return mamba_step(up(x_t), tuple(up(s) for s in state), weights, backend=backend)
    inputs = MambaStepInputs(x_t, state, weights)
    check_mamba_step(inputs)
    request = Request(x_t.device, x_t.dtype, initial_state=True, final_state=True,
                      grad=grad_needed(x_t, state, tuple(weights[:2]), tuple(weights.inner), tuple(weights[3:])),
                      facts=(("d_state", weights.inner.A_log.shape[1]),))
    return dispatch.choose(backend, request).fn(inputs)


__all__ = ["MambaStepInputs", "MambaStepWeights", "check_mamba_step", "dispatch", "mamba_step", "mamba_step_cpu",
           "mamba_step_reference"]
