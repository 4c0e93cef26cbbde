"""The gated delta rule (Gated DeltaNet, Yang, Kautz, Hatamizadeh, arXiv 2412.06464):
``gated_delta_rule(q, k, v, g, beta, ...)`` behind one dispatch.

Backends, in ``auto``'s preference order (``ops/dispatch.py`` explains the choice):
- ``triton``: our Triton kernels (triton.py), on CUDA: one program per (batch, value head) runs its chunks in
  order, the state on chip;
- ``cpu``: our C++ CPU kernels (csrc/gated_delta_cpu.cpp, bound in cpu.py), OpenMP over batch × value heads,
  forward and an exact recompute-based backward; built on first use;
- ``chunked``: plain PyTorch, the WY / UT-transform chunked form, autograd backward (chunked.py);
- ``reference``: the recurrence one token at a time, the oracle (reference.py).

The conventions (state key-first, where α applies, the scale of q, the gate as log α) are stated in
reference.py; shapes in inputs.py. One token at a time (a layer's ``step``): ``gated_delta_step`` (step.py).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from ..dispatch import HALF_DTYPES, REAL_DTYPES, Capabilities, Dispatcher, Request, grad_needed, register_op
from ..segments import Segments
from . import cpu
from .chunked import gated_delta_chunked
from .inputs import GatedDeltaInputs, check_gated_delta, fake_gated_delta
from .reference import gated_delta_reference
from .step import gated_delta_step

ALL_FLOAT = REAL_DTYPES + HALF_DTYPES


def _probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    gen = torch.Generator().manual_seed(0)
    b, length, hk, hv, dk, dv = 1, 5, 1, 2, 3, 2
    q, k = (torch.randn(b, length, hk, dk, generator=gen) for _ in range(2))
    k = torch.nn.functional.normalize(k, dim=-1)
    v = torch.randn(b, length, hv, dv, generator=gen)
    g = -torch.rand(b, length, hv, generator=gen)
    beta = torch.rand(b, length, hv, generator=gen)
    h0 = torch.randn(b, hv, dk, dv, generator=gen)
    q, k, v, g, beta, h0 = (t.to(device).requires_grad_() for t in (q, k, v, g, beta, h0))
    x = GatedDeltaInputs(q, k, v, g, beta, None, 2, h0 if caps.initial_state else None, None)
    return (x,), {"output_final_state": caps.final_state}


def _triton(x: GatedDeltaInputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    from .triton import gated_delta_triton  # needs triton: imported on first use only

    return gated_delta_triton(x, output_final_state)


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


dispatch = Dispatcher("gated_delta_rule", gated_delta_reference, _probe_case, fake=fake_gated_delta)
dispatch.register("triton", _triton, ("cuda",), Capabilities(dtypes=ALL_FLOAT, segments=True), available=_triton_available,
                  opaque=True)
dispatch.register("cpu", cpu.gated_delta_cpu, ("cpu",), Capabilities(dtypes=ALL_FLOAT, segments=True), available=cpu.available,
                  opaque=True)
dispatch.register("chunked", gated_delta_chunked, ("cpu", "cuda"), Capabilities(dtypes=ALL_FLOAT, segments=True))
dispatch.register("reference", gated_delta_reference, ("cpu", "cuda"), Capabilities(dtypes=ALL_FLOAT, segments=True))


@register_op(dispatch)
def gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    chunk_size: int = 64,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    segments: Segments | None = None,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The gated delta rule, per value head h (reading query/key head h // (heads_v / heads_k)):

        S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,   o_t = S_tᵀ (scale · q_t),   α_t = exp(g_t)

    with the state S (d_k, d_v) key-first (the paper's S transposed; fla's and transformers' layout).

    q, k (batch, length, heads_k, d_k); v (batch, length, heads_v, d_v), heads_v a multiple of heads_k;
    g (batch, length, heads_v) the log-decay log α (≤ 0); beta (batch, length, heads_v) in [0, 1];
    scale: None for d_k ** -0.5; chunk_size: chunk length of the chunked backends (results do not depend on it
    beyond rounding); initial_state (num_seqs, heads_v, d_k, d_v); segments: packed documents (the state
    restarts at each document start; states are per document, num_seqs = segments.num_docs).
    Returns o (batch, length, heads_v, d_v) in q's dtype, or with ``output_final_state`` (o, final states
    (num_seqs, heads_v, d_k, d_v)) in float32 (float64 for float64 q). Half-precision inputs compute in float32.
    ``backend``: None ($SSMZOO_BACKEND or auto), "auto", or a name in ``dispatch.backends``.
    """
    x = GatedDeltaInputs(q, k, v, g, beta, scale, chunk_size, initial_state, segments)
    check_gated_delta(x, output_final_state)
    packed = segments is not None and not segments.unpacked
    request = Request(q.device, q.dtype, initial_state=initial_state is not None, final_state=output_final_state,
                      grad=grad_needed(q, k, v, g, beta, initial_state), segments=packed)
    return dispatch.choose(backend, request).fn(x, output_final_state)


__all__ = ["GatedDeltaInputs", "check_gated_delta", "dispatch", "gated_delta_chunked", "gated_delta_reference",
           "gated_delta_rule", "gated_delta_step"]
