"""Mamba's inner block as one op: ``mamba_inner(xz, weights, ...)`` maps in_proj's output xz
(batch, length, 2·D_inner), channels last, to the gated scan output y (batch, length, D_inner),
ready for out_proj (reference.py has the equations).

Backends, in ``auto``'s preference order (``ops/dispatch.py`` explains the choice):
- ``cpu`` (cpu.py, csrc/mamba_cpu.cpp): fused conv + scan + gate in the channels-last layout;
  float32/float64 on CPU, d_state <= 256, and only when the caller did not ask for particular
  scan or conv backends;
- ``unfused`` (unfused.py): the ``causal_conv1d`` and ``selective_scan`` ops composed, each
  dispatched on its own with the backends the caller names: every device and dtype;
- ``reference`` (reference.py): the same composition on both ops' references.
Packed documents (``segments``): every backend; ``unfused`` passes them to the two ops, whose GPU
kernels decline them.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..causal_conv1d import dispatch as conv_dispatch
from ..dispatch import (ENV_VAR, HALF_DTYPES, REAL_DTYPES, Capabilities, Dispatcher, Request, grad_needed,
                        register_op, state_at_most)
from ..segments import Segments
from ..selective_scan import dispatch as scan_dispatch
from .cpu import MAX_STATE, available, mamba_inner_cpu
from .inputs import MambaInnerInputs, MambaInnerWeights, State, check_mamba_inner, fake_mamba_inner
from .reference import mamba_inner_reference
from .unfused import mamba_inner_unfused


def _inner_probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    batch, length, d, n, rank, width = 1, 5, 3, 2, 1, 3
    leaf = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(device).requires_grad_()  # noqa: E731
    w = MambaInnerWeights(leaf(d, width), leaf(d), leaf(rank + 2 * n, d), leaf(d, rank), leaf(d), leaf(d, n, scale=0.5),
                          leaf(d))
    states = (leaf(batch, d, width - 1), leaf(batch, d, n)) if caps.initial_state else None
    return (MambaInnerInputs(leaf(batch, length, 2 * d), w, states),), {"output_final_state": caps.final_state}


def _cpu_accepts(request: Request) -> str | None:
    too_big = state_at_most(MAX_STATE)(request)
    if too_big is not None:
        return too_big
    asked = [f"{op} backend {name!r}" for op, name in (("selective_scan", request.fact("scan_backend")),
                                                        ("causal_conv1d", request.fact("conv_backend")))
             if name not in (None, "auto")]
    if asked:
        return f"the caller asked for the {' and '.join(asked)} (the unfused form runs them)"
    return None


ALL_FLOAT = REAL_DTYPES + HALF_DTYPES
dispatch = Dispatcher("mamba_inner", mamba_inner_reference, _inner_probe_case, fake=fake_mamba_inner)
dispatch.register("cpu", mamba_inner_cpu, ("cpu",), Capabilities(segments=True), available=available,
                  accepts=_cpu_accepts, opaque=True)
dispatch.register("unfused", mamba_inner_unfused, ("cpu", "cuda"), Capabilities(dtypes=ALL_FLOAT, segments=True))
dispatch.register("reference", mamba_inner_reference, ("cpu", "cuda"), Capabilities(dtypes=ALL_FLOAT, segments=True))


def _requested(op_dispatch: Dispatcher, name: str | None) -> str | None:
    """The backend a call of that op would be steered to: the name given, else $SSMZOO_BACKEND when
    that op has such a backend."""
    if name is None:
        env = os.environ.get(ENV_VAR)
        return env if env in op_dispatch.backends else None
    return name


@register_op(dispatch)
def mamba_inner(
    xz: Tensor,
    weights: MambaInnerWeights,
    *,
    initial_state: State | None = None,
    output_final_state: bool = False,
    segments: Segments | None = None,
    selective_scan_backend: str | None = None,
    causal_conv1d_backend: str | None = None,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, State]:
    """y (batch, length, D) gated, from xz (batch, length, 2·D). States, in and out, are
    (conv_state (batch, D, W-1), ssm_state (batch, D, N)) (either may be None going in); with
    ``output_final_state`` the final one is returned too. ``segments``: packed documents, neither the
    conv nor the scan reading across a document start; states are then per document (num_docs, ...).
    ``selective_scan_backend``/``causal_conv1d_backend``: the backends the unfused form uses for its two
    ops (naming one keeps the call off the fused form); ``backend``: None ($SSMZOO_BACKEND or auto),
    "auto", or a name in ``dispatch.backends``."""
    if initial_state is not None and all(s is None for s in initial_state):
        initial_state = None
    inputs = MambaInnerInputs(xz, weights, initial_state, segments, selective_scan_backend, causal_conv1d_backend)
    check_mamba_inner(inputs)
    if segments is not None and segments.unpacked:
        inputs = inputs._replace(segments=None)
    request = Request(
        xz.device, xz.dtype, initial_state=initial_state is not None, final_state=output_final_state,
        grad=grad_needed(xz, tuple(weights), initial_state), segments=inputs.segments is not None,
        facts=(("d_state", weights.A_log.shape[1]),
               ("scan_backend", _requested(scan_dispatch, selective_scan_backend)),
               ("conv_backend", _requested(conv_dispatch, causal_conv1d_backend))),
    )
    return dispatch.choose(backend, request).fn(inputs, output_final_state=output_final_state)


__all__ = ["MambaInnerInputs", "MambaInnerWeights", "State", "available", "check_mamba_inner", "dispatch",
           "mamba_inner", "mamba_inner_cpu", "mamba_inner_reference", "mamba_inner_unfused"]
