"""Titans' neural long-term memory, written as the literal per-token update rule (the reference).

Behrouz, Zhong, Mirrokni, "Titans: Learning to Memorize at Test Time" (2025), section 3.1:
    associative loss     ℓ(M_{t-1}; x_t) = ‖M_{t-1}(k_t) − v_t‖²                (eq. 12)
    surprise (momentum)  S_t = η_t S_{t-1} − θ_t ∇ℓ(M_{t-1}; x_t)               (eq. 10)
    forgetting           M_t = (1 − α_t) M_{t-1} + S_t                          (eq. 13)
    retrieval            y_t = M*(q_t)   (a forward pass without updating)      (eq. 15)

Chunked training (section 3.2) takes every gradient of a chunk at the chunk's starting weights; with
``chunk_size=1`` that is exactly the rule above. Here the gradient comes from autograd, token by
token, in a plain Python loop; ``chunked.py`` is the fast form and is tested against this.
Retrieval reads the weights from before the current chunk's update (for chunk size 1: M_{t-1}).

Shapes: q, k, v (batch, heads, length, d); theta, eta, alpha (batch, heads, length);
memory weights: a tuple of (batch, heads, out, in) matrices, the MLP's layers in order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .inputs import MemoryInputs, Weights


def memory_mlp(weights: Weights, x: Tensor) -> Tensor:
    """The memory M: x (..., d) through Linear, SiLU, ..., Linear (no biases); weights (..., out, in)."""
    for i, w in enumerate(weights):
        if i > 0:
            x = F.silu(x)
        x = torch.einsum("...oi,...i->...o", w, x)
    return x


def associative_loss(weights: Weights, k: Tensor, v: Tensor) -> Tensor:
    """ℓ = ‖M(k) − v‖² (eq. 12), summed over everything given."""
    return (memory_mlp(weights, k) - v).pow(2).sum()


def neural_memory_reference(
    x: MemoryInputs, *, output_final_state: bool = False
) -> Tensor | tuple[Tensor, tuple[Weights, Weights]]:
    """Run the memory over a sequence token by token. Returns y, or (y, (weights, momentum)) with
    ``output_final_state``.

    Within a chunk of ``chunk_size`` tokens, gradients and retrieval use the chunk's starting
    weights; the momentum and forgetting recurrences still run per token. A last chunk shorter than
    ``chunk_size`` is retrieved from and, when ``update_last_partial``, also applied."""
    q, k, v, theta, eta, alpha, (weights, momentum), chunk_size, update_last_partial = x
    length = q.shape[2]
    weights, momentum = tuple(weights), tuple(momentum)
    start = weights
    ys = []
    full = length - length % chunk_size if not update_last_partial else length
    for t in range(length):
        if t % chunk_size == 0:
            start = weights  # the weights every gradient and retrieval of this chunk sees
        ys.append(memory_mlp(start, q[:, :, t]))
        if t >= full:
            continue  # the unfinished last chunk is only read from
        # ∇ℓ at the chunk's starting weights, for each (batch, head) separately (the sum over
        # batch and heads does not mix them: each has its own weights).
        leaves = tuple(w.detach().requires_grad_() if not w.requires_grad else w for w in start)
        grads = torch.autograd.grad(
            associative_loss(leaves, k[:, :, t], v[:, :, t]), leaves, create_graph=True
        )
        th, et, al = (g[:, :, t, None, None] for g in (theta, eta, alpha))
        momentum = tuple(et * s - th * g for s, g in zip(momentum, grads))  # eq. 10
        weights = tuple((1 - al) * w + s for w, s in zip(weights, momentum))  # eq. 13
    y = torch.stack(ys, 2)
    return (y, (weights, momentum)) if output_final_state else y
