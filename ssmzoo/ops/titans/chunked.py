"""Titans' neural memory, chunked and parallel within a chunk (paper section 3.2).

Every gradient of a chunk is taken at the chunk's starting weights M_0, so the per-token
gradients g_i = ∇ℓ(M_0; k_i, v_i) are independent. The momentum and forgetting recurrences
(eqs. 10, 13) are then linear in the g_i and are solved in closed form from cumulative sums of
log-gates (a prefix scan):
    S_t = (Π_{j≤t} η_j) S_0 − Σ_{i≤t} (Π_{i<j≤t} η_j) θ_i g_i
    M_n = (Π_{j≤n} (1−α_j)) M_0 + Σ_t (Π_{t<j≤n} (1−α_j)) S_t
The end-of-chunk momentum and weights are therefore *weighted sums* of per-token gradients,
Σ_i w_i g_i, and for an MLP that is one closed-form backward pass with per-token loss weights
w_i: no per-token gradient tensor is ever materialised. All of this is ordinary differentiable
tensor algebra, so the outer model trains by backprop through the memory updates (second order
through the inner gradients). Retrieval for a chunk's tokens uses M_0 (the weights from before
the chunk's update). ``reference.py`` is the literal per-token loop this is tested against.

Shapes: q, k, v (batch, heads, length, d); theta, eta, alpha (batch, heads, length) in (0, 1)
(theta > 0); weights, momentum: tuples of (batch, heads, out, in), the MLP's layers in order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Weights = tuple[Tensor, ...]


def _silu_grad(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def memory_forward(weights: Weights, x: Tensor) -> Tensor:
    """M(x) for x (batch, heads, n, d): Linear, SiLU, ..., Linear (no biases)."""
    for i, w in enumerate(weights):
        if i > 0:
            x = F.silu(x)
        x = torch.einsum("bhoi,bhni->bhno", w, x)
    return x


def weighted_memory_gradients(weights: Weights, k: Tensor, v: Tensor, token_weights: Tensor) -> Weights:
    """Σ_i c_{s,i} ∇_W ‖M(k_i) − v_i‖² for several weightings s at once, in closed form.

    k, v (batch, heads, n, d); token_weights (batch, heads, s, n). Returns, per layer,
    (batch, heads, s, out, in)."""
    inputs, pre = [], []  # the input of each layer, and the pre-activation it was computed from
    x = k
    for i, w in enumerate(weights):
        if i > 0:
            pre.append(x)
            x = F.silu(x)
        inputs.append(x)
        x = torch.einsum("bhoi,bhni->bhno", w, x)
    delta = 2 * (x - v)  # dℓ/dM(k)
    grads: list[Tensor] = []
    for i in range(len(weights) - 1, -1, -1):
        grads.append(torch.einsum("bhsn,bhno,bhni->bhsoi", token_weights, delta, inputs[i]))
        if i > 0:
            delta = torch.einsum("bhno,bhoi->bhni", delta, weights[i]) * _silu_grad(pre[i - 1])
    return tuple(reversed(grads))


def chunk_update(
    weights: Weights,
    momentum: Weights,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    eta: Tensor,
    alpha: Tensor,
) -> tuple[Weights, Weights]:
    """Apply one chunk of n tokens: all gradients at ``weights``; returns (weights, momentum) after it."""
    n = k.shape[2]
    log_eta = torch.cumsum(torch.log(eta), -1)  # log Π_{j≤t} η_j
    log_keep = torch.cumsum(torch.log1p(-alpha), -1)  # log Π_{j≤t} (1 − α_j)
    causal = torch.ones(n, n, dtype=torch.bool, device=k.device).tril()
    # momentum_decay[t, i] = Π_{i<j≤t} η_j for i ≤ t (exponent ≤ 0, so no overflow), else 0
    momentum_decay = (log_eta[..., :, None] - log_eta[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    keep_to_end = torch.exp(log_keep[..., -1:] - log_keep)  # Π_{t<j≤n} (1 − α_j)
    to_momentum = momentum_decay[..., -1, :] * theta  # coefficient of g_i in S_n
    to_weights = torch.einsum("bht,bhti->bhi", keep_to_end, momentum_decay) * theta  # ... in M_n
    grads = weighted_memory_gradients(weights, k, v, torch.stack([to_momentum, to_weights], 2))
    carry_momentum = log_eta[..., -1].exp()[..., None, None]  # Π η: S_0's share of S_n
    carry_weights = log_keep[..., -1].exp()[..., None, None]  # Π (1 − α): M_0's share of M_n
    momentum_to_weights = (keep_to_end * log_eta.exp()).sum(-1)[..., None, None]  # S_0's share of M_n
    new_momentum = tuple(carry_momentum * s - g[:, :, 0] for s, g in zip(momentum, grads))
    new_weights = tuple(
        carry_weights * w + momentum_to_weights * s - g[:, :, 1] for w, s, g in zip(weights, momentum, grads)
    )
    return new_weights, new_momentum


def neural_memory_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    theta: Tensor,
    eta: Tensor,
    alpha: Tensor,
    weights: Weights,
    momentum: Weights,
    chunk_size: int,
    update_last_partial: bool = True,
) -> tuple[Tensor, Weights, Weights]:
    """Run the memory over a sequence chunk by chunk. Returns (y, final weights, final momentum).

    Chunks start at position 0. A last chunk shorter than ``chunk_size`` is retrieved from and,
    when ``update_last_partial``, also applied (the layer leaves it out and buffers it instead)."""
    length = q.shape[2]
    ys = []
    for start in range(0, length, chunk_size):
        end = min(start + chunk_size, length)
        ys.append(memory_forward(weights, q[:, :, start:end]))
        if end - start == chunk_size or update_last_partial:
            part = slice(start, end)
            weights, momentum = chunk_update(
                weights, momentum, k[:, :, part], v[:, :, part], theta[:, :, part], eta[:, :, part],
                alpha[:, :, part],
            )
    return torch.cat(ys, 2), tuple(weights), tuple(momentum)
