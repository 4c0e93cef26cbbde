"""Mamba-2's SSD (state space duality; Dao & Gu, arXiv:2405.21060): ``ssd(x, dt, A, B, C, ...)`` behind one
dispatch.

Backends, in ``auto``'s preference order (``ops/dispatch.py`` explains the choice):
- ``mamba_ssm``: mamba-ssm's fused Triton ``mamba_chunk_scan_combined``, when installed (mamba_ssm.py);
  packed documents for outputs only, float32/half, so packed calls that need a state go on;
- ``triton``: our Triton kernels (triton.py), on CUDA;
- ``cpu``: our C++ CPU kernels for the chunk steps (csrc/ssd_cpu.cpp, bound in cpu.py), built on first use;
- ``chunked``: plain PyTorch, the four-step chunked algorithm, autograd backward (chunked.py);
- ``reference``: the sequential recurrence, the oracle (reference.py).

Packed documents: ``segments`` (``ops/segments.py``); initial and final states are then one per document.
The chunk layout, segment sums and the recurrence between chunks are ``ops/chunks.py``'s. One token at a
time (a layer's ``step``): ``ssd_update`` (update.py).
"""

from __future__ import annotations

import importlib.util
import math

import torch
from torch import Tensor

from ..dispatch import HALF_DTYPES, REAL_DTYPES, Capabilities, Dispatcher, Request, autocast_off, grad_needed, register_op
from ..segments import Segments
from . import cpu, mamba_ssm
from .chunked import ssd_chunked
from .inputs import SSDInputs, check_ssd, fake_ssd
from .reference import discretize_dt, ssd_reference
from .update import ssd_update

ALL_FLOAT = REAL_DTYPES + HALF_DTYPES


def _probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    b, l, h, p, n = 1, 5, 2, 2, 3
    x, dt, B, C, z = (torch.randn(*s, generator=g) for s in ((b, l, h, p), (b, l, h), (b, l, 1, n), (b, l, 1, n),
                                                              (b, l, h, p)))
    A = -torch.rand(h, generator=g) - 0.5
    D, dt_bias, h0 = torch.randn(h, generator=g), torch.randn(h, generator=g), torch.randn(b, h, p, n, generator=g)
    x, dt, A, B, C, D, z, dt_bias, h0 = (t.to(device).requires_grad_() for t in (x, dt, A, B, C, D, z, dt_bias, h0))
    inputs = SSDInputs(x, dt, A, B, C, chunk_size=2, D=D, z=z, dt_bias=dt_bias, dt_softplus=True,
                       initial_state=h0 if caps.initial_state else None)
    return (inputs,), {"output_final_state": caps.final_state}


def _triton(*args, **kwargs):
    from .triton import ssd_triton  # needs triton: imported on first use only

    return ssd_triton(*args, **kwargs)


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


def _mamba_ssm_accepts(request: Request) -> str | None:
    if request.segments and (request.initial_state or request.final_state):
        return "it takes no initial state and returns no final state for packed documents"
    return None


PACKED = Capabilities(dtypes=ALL_FLOAT, segments=True)
dispatch = Dispatcher("ssd", ssd_reference, _probe_case, fake=fake_ssd)
dispatch.register("mamba_ssm", mamba_ssm.ssd_mamba_ssm, ("cuda",),
                  Capabilities(dtypes=(torch.float32,) + HALF_DTYPES, segments=True), available=mamba_ssm.available,
                  accepts=_mamba_ssm_accepts, opaque=True)
dispatch.register("triton", _triton, ("cuda",), PACKED, available=_triton_available, opaque=True)
dispatch.register("cpu", cpu.ssd_cpu, ("cpu",), PACKED, available=cpu.available, opaque=True)
dispatch.register("chunked", ssd_chunked, ("cpu", "cuda"), PACKED)
dispatch.register("reference", ssd_reference, ("cpu", "cuda"), PACKED)


@register_op(dispatch)
def ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    chunk_size: int = 256,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    segments: Segments | None = None,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba-2's SSD: per head h, S_t = exp(Δ_t A_h) S_{t-1} + Δ_t x_t B_tᵀ, y_t = S_t C_t + D x_t,
    then y_t *= silu(z_t) (mamba-ssm's ``mamba_chunk_scan_combined`` semantics).

    x (batch, length, heads, headdim); dt (batch, length, heads); A (heads,); B, C (batch, length,
    groups, d_state), group g serving heads g·heads/groups .. (g+1)·heads/groups - 1; D (heads,) or
    (heads, headdim); z like x; dt_bias (heads,). Δ = dt + dt_bias, softplus'd when ``dt_softplus``,
    then clamped to ``dt_limit``. ``chunk_size``: chunk length of the chunked backends (results do not
    depend on it beyond rounding). ``initial_state`` (batch, heads, headdim, d_state).
    ``segments`` (:class:`~ssmzoo.ops.segments.Segments` of (batch, length)): packed documents, no state
    crossing a document start; initial and final states are then one per document (num_docs, ...).
    Returns y (batch, length, heads, headdim) in x's dtype, or with ``output_final_state``
    (y, final states (batch or num_docs, heads, headdim, d_state)) in float32 (float64 for float64 x).
    ``backend``: None ($SSMZOO_BACKEND or auto), "auto", or a name in ``dispatch.backends``.
    """
    inputs = SSDInputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_state, segments)
    check_ssd(inputs)
    if segments is not None and segments.unpacked:
        inputs = inputs._replace(segments=None)
    inputs = inputs._replace(dt_limit=tuple(dt_limit))
    request = Request(
        x.device, x.dtype, initial_state=initial_state is not None, final_state=output_final_state,
        grad=grad_needed(x, dt, A, B, C, D, z, dt_bias, initial_state), segments=inputs.segments is not None,
    )
    # Under autocast the inputs arrive in mixed precisions (x in bf16, A a float32 parameter); every backend
    # computes in float32 itself, so autocast is switched off inside (else it recasts the backends' float32
    # intermediates to bf16 on their way into the C++ and Triton kernels).
    with autocast_off(x.device):
        return dispatch.choose(backend, request).fn(inputs, output_final_state=output_final_state)


__all__ = ["SSDInputs", "check_ssd", "discretize_dt", "dispatch", "ssd", "ssd_chunked", "ssd_reference",
           "ssd_update"]
