"""A diagonal linear recurrence, h_t = λ_t ⊙ h_{t-1} + x_t (S5's and the LRU's state update), behind one dispatch.

    h = diagonal_recurrence(x, decay)                       # x (batch, length, dim), decay (dim,) or per step
    h, final = diagonal_recurrence(x, decay, initial_state=h0, output_final_state=True)
    h = diagonal_recurrence(x, decay, reverse=True)         # the anti-causal direction of a bidirectional layer
    h, finals = diagonal_recurrence(x, decay, segments=seg, output_final_state=True)   # per-document states

Real (float32, float64) or complex (complex64, complex128). Backends, in ``auto``'s preference order
(``ops/dispatch.py`` explains the choice):
- ``triton``: our Triton kernels (triton.py), on CUDA;
- ``cpu``: our C++ CPU kernel (csrc/diagonal_recurrence_cpu.cpp, bound in cpu.py), built on first use;
- ``scan``: a parallel associative scan in plain PyTorch, autograd backward (scan.py);
- ``reference``: the sequential oracle (reference.py).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from ..dispatch import COMPLEX_DTYPES, REAL_DTYPES, Capabilities, Dispatcher, Request, grad_needed, register_op
from ..segments import Segments
from . import cpu
from .inputs import RecurrenceInputs, check_diagonal_recurrence, fake_diagonal_recurrence
from .reference import diagonal_recurrence_reference
from .scan import diagonal_recurrence_scan

DTYPES = REAL_DTYPES + COMPLEX_DTYPES


def _probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    x = torch.complex(torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g))
    decay = torch.polar(torch.rand(3, generator=g) * 0.5 + 0.4, torch.randn(3, generator=g))
    h0 = torch.complex(torch.randn(3, 3, generator=g), torch.randn(3, 3, generator=g))
    x, decay, h0 = (t.to(device).requires_grad_() for t in (x, decay, h0))
    segments = Segments.from_lengths([[2, 3], [5]], 5, device=device)
    inputs = RecurrenceInputs(x, decay, False, h0 if caps.initial_state else None, segments)
    return (inputs,), {"output_final_state": caps.final_state}


def _triton(inputs: RecurrenceInputs, output_final_state: bool = False):
    from .triton import diagonal_recurrence_triton  # needs triton: imported on first use only

    return diagonal_recurrence_triton(inputs, output_final_state)


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


dispatch = Dispatcher("diagonal_recurrence", diagonal_recurrence_reference, _probe_case, fake=fake_diagonal_recurrence)
dispatch.register("triton", _triton, ("cuda",), Capabilities(dtypes=DTYPES, segments=True), available=_triton_available, opaque=True)
dispatch.register("cpu", cpu.diagonal_recurrence_cpu, ("cpu",), Capabilities(dtypes=DTYPES, segments=True), available=cpu.available, opaque=True)
dispatch.register("scan", diagonal_recurrence_scan, ("cpu", "cuda"), Capabilities(dtypes=DTYPES, segments=True))
dispatch.register("reference", diagonal_recurrence_reference, ("cpu", "cuda"), Capabilities(dtypes=DTYPES, segments=True))


@register_op(dispatch)
def diagonal_recurrence(
    x: Tensor,
    decay: Tensor,
    *,
    reverse: bool = False,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    segments: Segments | None = None,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Every step's state of h_t = decay_t ⊙ h_{t-1} + x_t (h_t = decay_t ⊙ h_{t+1} + x_t with ``reverse``).

    x (batch, length, dim), real or complex; decay (dim,) or (batch, length, dim), x's dtype;
    initial_state (batch, dim), or (num_docs, dim) with ``segments`` (zeros when None); ``segments``
    restarts the recurrence at every packed document. Returns h (batch, length, dim), or (h, final states
    (batch or num_docs, dim)) with ``output_final_state``. ``backend``: None ($SSMZOO_BACKEND or auto),
    "auto", or a name in ``dispatch.backends``.
    """
    inputs = RecurrenceInputs(x, decay, reverse, initial_state, segments)
    check_diagonal_recurrence(inputs)
    if not isinstance(output_final_state, bool):
        raise ValueError(f"diagonal_recurrence: output_final_state must be True or False, got {output_final_state!r}")
    request = Request(x.device, x.dtype, initial_state=initial_state is not None, final_state=output_final_state,
                      grad=grad_needed(x, decay, initial_state),
                      segments=segments is not None and not segments.unpacked)
    return dispatch.choose(backend, request).fn(inputs, output_final_state)


__all__ = ["RecurrenceInputs", "check_diagonal_recurrence", "diagonal_recurrence", "diagonal_recurrence_reference",
           "diagonal_recurrence_scan", "dispatch"]
