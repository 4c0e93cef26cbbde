"""Hierarchical sparse attention (HSA; Hu, Leng, Zhao, Tu, Wu 2025): ``hsa(q, k, v, landmarks, ...)`` behind one
dispatch.

Every query picks the top-K of the chunks (S keys each) that lie wholly before it, by the score of its
query against each chunk's landmark, attends inside each picked chunk with a softmax of its own and
mixes the K results with weights from the scores (stick-breaking, or a softmax); reference.py states the
equations and every convention (past chunks, slot order, ties, empty slots, grouped heads).

Backends, in ``auto``'s preference order (``ops/dispatch.py`` explains the choice):
- ``triton`` (triton.py): Triton kernels, chunk-major, per-(row, chunk) log-sum-exp saved for the
  backward; on CUDA (tested on CPU under ``TRITON_INTERPRET=1``);
- ``cpu`` (cpu.py, csrc/hsa_cpu.cpp): our C++ CPU kernel, chunk-major, one thread per chunk with its
  keys in cache, built on first use; 1.7-2.3× less CPU time than ``chunked`` at 16K-64K tokens
  (benchmarks/speed/hsa_op.py);
- ``chunked`` (chunked.py): plain PyTorch, chunk-major batched matmuls in blocks of queries,
  recomputation in backward; O(L · K · S) work and no (L × L) anywhere;
- ``reference`` (reference.py): dense masks, (L × L) per head; the oracle.
The fast backends share routing.py (selection in blocks of queries, combination weights); the
selection scores every past chunk, so it alone grows as L² / S (about a third of ``cpu``'s time at 64K).

Decoding: q may be any later slice of the sequence. ``offset`` is the absolute position of q[:, 0]; k, v
and landmarks always start at position 0 and must hold every chunk complete before the last query.
One step at position t with a chunk cache of c = t // S complete chunks is
``hsa(q_t[:, None], k_cache[:, :c*S], v_cache[:, :c*S], landmarks_cache[:, :c], offset=t, ...)``; the
cache grows by one chunk (S keys, one landmark) every S tokens.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from ..dispatch import (HALF_DTYPES, REAL_DTYPES, Capabilities, Dispatcher, Request, autocast_dtype, autocast_off,
                        grad_needed, register_op)
from . import cpu
from .chunked import hsa_chunked
from .inputs import HSAInputs, check_hsa, fake_hsa
from .reference import hsa_reference
from .routing import select_chunks

ALL_FLOAT = REAL_DTYPES + HALF_DTYPES
STATELESS = dict(initial_state=False, final_state=False)  # HSA reads its cache as plain inputs


def _probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    # Grouped heads, a partial last chunk, queries with 0, 1 and 2 past chunks (K = 2 > 1).
    g = torch.Generator().manual_seed(0)
    b, length, hq, hk, d, S = 1, 11, 4, 2, 3, 3
    q, k, v = (torch.randn(*s, generator=g) for s in ((b, length, hq, d), (b, length, hk, d), (b, length, hk, d)))
    landmarks = torch.randn(b, -(-length // S), hk, d, generator=g)
    q, k, v, landmarks = (t.to(device).requires_grad_() for t in (q, k, v, landmarks))
    return (HSAInputs(q, k, v, landmarks, chunk_size=S, top_k=2, combine="stick_breaking"),), {}


def _triton(x: HSAInputs) -> Tensor:
    from .triton import hsa_triton  # needs triton: imported on first use only

    return hsa_triton(x)


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


dispatch = Dispatcher("hsa", hsa_reference, _probe_case, fake=fake_hsa, rtol=1e-3, atol=1e-4)
dispatch.register("triton", _triton, ("cuda",), Capabilities(dtypes=ALL_FLOAT, **STATELESS),
                  available=_triton_available, opaque=True)
dispatch.register("cpu", cpu.hsa_cpu, ("cpu",), Capabilities(dtypes=ALL_FLOAT, **STATELESS), available=cpu.available, opaque=True)
dispatch.register("chunked", hsa_chunked, ("cpu", "cuda"), Capabilities(dtypes=ALL_FLOAT, **STATELESS))
# The reference materialises (Lq × Lk) logits and (Lq × n × n) ranks per head: auto takes it for small problems only.
dispatch.register("reference", hsa_reference, ("cpu", "cuda"),
                  Capabilities(dtypes=ALL_FLOAT, max_size=1 << 24, **STATELESS))


@register_op(dispatch)
def hsa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    landmarks: Tensor,
    *,
    chunk_size: int,
    top_k: int,
    combine: str = "stick_breaking",
    scale: float | None = None,
    offset: int = 0,
    selection_q: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """Hierarchical sparse attention.

    Args:
        q: (batch, Lq, hq, d) queries at absolute positions offset, ..., offset + Lq − 1.
        k, v: (batch, Lk, hk, d) keys and values from position 0; hk divides hq (query head h reads KV
            head h // (hq / hk)). Chunk i holds positions [i·S, (i+1)·S).
        landmarks: (batch, ceil(Lk / S), hk, d_sel): one summary per chunk of S keys (the layer's chunk
            encoder makes them); that of an incomplete last chunk is never read.
        chunk_size: S. top_k: K, the chunks each query attends to (fewer when fewer are past).
        combine: "stick_breaking" (most recent selected chunk first) or "softmax" over the K scores.
        scale: the in-chunk logit scale, default 1/√d. Chunk scores are always q·landmark/√d_sel.
        offset: absolute position of q[:, 0] (decoding, or a later segment of a stream).
        selection_q: optional (batch, Lq, hs, d_sel) queries that pick the chunks instead of q, hk | hs | hq;
            query head h then shares the chunks and weights of selection head h // (hq / hs). Without it
            every query head selects with its own q (d_sel = d).
        backend: None ($SSMZOO_BACKEND or auto), "auto", or a name in ``dispatch.backends``.

    Returns:
        (batch, Lq, hq, d) in q's dtype (computed in float32, or float64 for float64); under autocast in
        autocast's dtype, as attention is.
    """
    cast = autocast_dtype(q.device) if isinstance(q, Tensor) else None
    if cast is not None:
        # Under autocast q comes from a linear layer in its dtype while cached keys or landmarks may not: every
        # input goes to autocast's dtype, and the backends (float32 inside) run with autocast off.
        q, k, v, landmarks, selection_q = (t.to(cast) if isinstance(t, Tensor) and t.is_floating_point() else t
                                           for t in (q, k, v, landmarks, selection_q))
        with autocast_off(q.device):
            return hsa(q, k, v, landmarks, chunk_size=chunk_size, top_k=top_k, combine=combine, scale=scale,
                       offset=offset, selection_q=selection_q, backend=backend)
    inputs = HSAInputs(q, k, v, landmarks, chunk_size, top_k, combine, scale, offset, selection_q)
    check_hsa(inputs)
    batch, length, hq, _ = q.shape
    n = landmarks.shape[1]
    # What the reference materialises: (Lq × Lk) logits and the (Lq × n × n) selection ranks per head.
    request = Request(q.device, q.dtype, grad=grad_needed(q, k, v, landmarks, selection_q),
                      size=batch * hq * length * (k.shape[1] + n * n))
    return dispatch.choose(backend, request).fn(inputs)


__all__ = ["HSAInputs", "check_hsa", "dispatch", "hsa", "hsa_chunked", "hsa_reference", "select_chunks"]
