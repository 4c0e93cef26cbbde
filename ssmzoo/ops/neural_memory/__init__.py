"""Titans' neural long-term memory (Behrouz, Zhong & Mirrokni, "Titans: Learning to Memorize at Test Time",
arXiv:2501.00663) as an op.

``neural_memory(q, k, v, theta, eta, alpha, *, chunk_size, initial_state=(weights, momentum))``
reads y_t = M(q_t) and writes k_t → v_t into the memory MLP M by gradient steps with momentum and
forgetting, every gradient of a chunk taken at the chunk's starting weights.

Backends, in ``auto``'s preference order (``ops/dispatch.py`` explains the choice):
- ``chunked`` (chunked.py): closed form per chunk (momentum and decay as a prefix scan, end-of-chunk
  weights as batched matmuls); trainable through the inner updates;
- ``reference`` (reference.py): the literal per-token rule with autograd gradients.

Shapes: q, k (batch, heads, length, d_in); v (batch, heads, length, d_out); theta, eta, alpha
(batch, heads, length) in (0, 1); weights, momentum: tuples of (batch or 1, heads, out, in), the
MLP's layers in order (d_in → ... → d_out).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..dispatch import HALF_DTYPES, Capabilities, Dispatcher, Request, autocast_dtype, autocast_off, grad_needed, register_op
from .chunked import chunk_update, gradient_factors, memory_forward, neural_memory_chunked
from .inputs import MemoryInputs, Weights, check_neural_memory, fake_neural_memory
from .reference import memory_mlp, neural_memory_reference


def _probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    b, h, n, d = 1, 2, 5, 3

    def leaf(*shape: int, scale: float = 1.0, offset: float = 0.0) -> Tensor:
        return (torch.randn(*shape, generator=g) * scale + offset).to(device).requires_grad_()

    q, k, v = leaf(b, h, n, d), leaf(b, h, n, d), leaf(b, h, n, d)
    theta = torch.sigmoid(leaf(b, h, n)) * 0.1
    eta, alpha = torch.sigmoid(leaf(b, h, n)), torch.sigmoid(leaf(b, h, n, offset=-3.0))
    weights = (leaf(1, h, 4, d, scale=0.5), leaf(1, h, d, 4, scale=0.5))
    momentum = tuple(torch.zeros(b, h, *w.shape[2:], device=device) for w in weights)
    return (MemoryInputs(q, k, v, theta, eta, alpha, (weights, momentum), chunk_size=2),), {"output_final_state": True}


dispatch = Dispatcher("neural_memory", neural_memory_reference, _probe_case, rtol=1e-3, atol=1e-4,
                      fake=fake_neural_memory)
# Opaque although it is plain PyTorch: its loop over chunks has a trip count set by the length, which torch.compile
# would unroll, fixing the length in the graph (a new length compiled again, long inputs made huge graphs). As one
# custom operator a compiled graph serves every length; eager calls are unchanged.
dispatch.register("chunked", neural_memory_chunked, ("cpu", "cuda"), opaque=True)
dispatch.register("reference", neural_memory_reference, ("cpu", "cuda"))


@register_op(dispatch)
def neural_memory(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    eta: Tensor,
    alpha: Tensor,
    *,
    chunk_size: int,
    initial_state: tuple[Weights, Weights],
    output_final_state: bool = False,
    update_last_partial: bool = True,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, tuple[Weights, Weights]]:
    """y (batch, heads, length, d_out), or (y, (weights, momentum)) with ``output_final_state``.

    A last chunk shorter than ``chunk_size`` is read from and, when ``update_last_partial``,
    written too (the layer leaves it out and buffers it in its state instead).
    ``backend``: None ($SSMZOO_BACKEND or auto), "auto", or a name in ``dispatch.backends``."""
    if isinstance(q, Tensor) and autocast_dtype(q.device) is not None:
        # The backends take float32 and float64 only: under autocast the half-precision inputs are computed in
        # float32 with autocast off (as autocast does for the ops it keeps in float32), and y comes out float32.
        def up(t: Any) -> Any:
            return t.float() if isinstance(t, Tensor) and t.dtype in HALF_DTYPES else t

        weights, momentum = initial_state
        with autocast_off(q.device):
            return neural_memory(up(q), up(k), up(v), up(theta), up(eta), up(alpha), chunk_size=chunk_size,
                                 initial_state=(tuple(map(up, weights)), tuple(map(up, momentum))),
                                 output_final_state=output_final_state, update_last_partial=update_last_partial,
                                 backend=backend)
    inputs = MemoryInputs(q, k, v, theta, eta, alpha, initial_state, chunk_size, update_last_partial)
    check_neural_memory(inputs)
    request = Request(q.device, q.dtype, initial_state=True, final_state=output_final_state,
                      grad=grad_needed(q, k, v, theta, eta, alpha, initial_state))
    return dispatch.choose(backend, request).fn(inputs, output_final_state=output_final_state)


__all__ = [
    "MemoryInputs", "check_neural_memory", "fake_neural_memory",
    "chunk_update", "dispatch", "gradient_factors", "memory_forward", "memory_mlp", "neural_memory",
    "neural_memory_chunked", "neural_memory_reference",
]
