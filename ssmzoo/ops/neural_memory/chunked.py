"""Titans' neural memory, chunked and parallel within a chunk (paper section 3.2).

Every gradient of a chunk is taken at the chunk's starting weights M_0, so the per-token
gradients g_i = ∇ℓ(M_0; k_i, v_i) are independent. The momentum and forgetting recurrences
(eqs. 10, 13) are then linear in the g_i and are solved in closed form from cumulative sums of
log-gates (a prefix scan):
    S_t = (Π_{j≤t} η_j) S_0 − Σ_{i≤t} (Π_{i<j≤t} η_j) θ_i g_i
    M_n = (Π_{j≤n} (1−α_j)) M_0 + Σ_t (Π_{t<j≤n} (1−α_j)) S_t
The end-of-chunk momentum and weights are therefore *weighted sums* of per-token gradients,
Σ_i w_i g_i; for each MLP layer g_i = δ_i ⊗ a_i (closed-form backprop), so a weighted sum is one
matmul: no per-token gradient tensor is ever materialised. All of this is ordinary differentiable
tensor algebra, so the outer model trains by backprop through the memory updates (second order
through the inner gradients). Retrieval for a chunk's tokens uses M_0 (the weights from before
the chunk's update). ``reference.py`` is the literal per-token loop this is tested against.

Shapes: q, k, v (batch, heads, length, d); theta, eta, alpha (batch, heads, length) in (0, 1)
(theta > 0); weights, momentum: tuples of (batch, heads, out, in), the MLP's layers in order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .reference import MemoryInputs, Weights


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


def gradient_factors(weights: Weights, k: Tensor, v: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Per memory layer l, the two factors of the per-token gradient of ‖M(k_i) − v_i‖² (eq. 12):
    ∇_{W_l} ℓ_i = δ_{l,i} ⊗ a_{l,i}, with δ (batch, heads, n, out) the loss's derivative at the
    layer's output and a (batch, heads, n, in) its input. Closed-form backprop through the MLP."""
    inputs, pre = [], []  # the input of each layer, and the pre-activation it was computed from
    x = k
    for i, w in enumerate(weights):
        if i > 0:
            pre.append(x)
            x = F.silu(x)
        inputs.append(x)
        x = torch.einsum("bhoi,bhni->bhno", w, x)
    delta = 2 * (x - v)  # dℓ/dM(k)
    factors: list[tuple[Tensor, Tensor]] = []
    for i in range(len(weights) - 1, -1, -1):
        factors.append((delta, inputs[i]))
        if i > 0:
            delta = torch.einsum("bhno,bhoi->bhni", delta, weights[i]) * _silu_grad(pre[i - 1])
    return factors[::-1]


def chunk_update(memory: Weights, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor) -> Weights:
    """Apply one chunk of n tokens, every gradient at the chunk's starting weights.

    ``memory``: per MLP layer (batch, heads, 2, out, in), the weights [0] and momentum [1] stacked,
    so that the whole update of a layer is two batched matmuls:
        [M_n; S_n] = mix @ [M_0; S_0] − Σ_i [c_i; d_i] θ_i δ_i ⊗ a_i
    with mix = [[Π(1−α), Σ_t Π_{t<j}(1−α_j) Π_{j≤t} η_j], [0, Π η]] (the momentum S_0's share of
    M_n is carried through every token's forgetting). Returns the new stacked memory."""
    n = k.shape[2]
    log_eta = torch.cumsum(torch.log(eta), -1)  # log Π_{j≤t} η_j
    log_keep = torch.cumsum(torch.log1p(-alpha), -1)  # log Π_{j≤t} (1 − α_j)
    causal = torch.ones(n, n, dtype=torch.bool, device=k.device).tril()
    # momentum_decay[t, i] = Π_{i<j≤t} η_j for i ≤ t (exponent ≤ 0, so no overflow), else 0
    momentum_decay = (log_eta[..., :, None] - log_eta[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    keep_to_end = torch.exp(log_keep[..., -1:] - log_keep)  # Π_{t<j≤n} (1 − α_j)
    to_weights = torch.einsum("bht,bhti->bhi", keep_to_end, momentum_decay) * theta  # c_i θ_i: g_i's share of M_n
    to_momentum = momentum_decay[..., -1, :] * theta  # d_i θ_i: g_i's share of S_n
    coeff = -torch.stack([to_weights, to_momentum], 2)  # (b, h, 2, n)

    carry_weights = log_keep[..., -1].exp()  # Π (1 − α): M_0's share of M_n
    carry_momentum = log_eta[..., -1].exp()  # Π η: S_0's share of S_n
    momentum_to_weights = (keep_to_end * log_eta.exp()).sum(-1)  # S_0's share of M_n
    zero = torch.zeros_like(carry_weights)
    mix = torch.stack([torch.stack([carry_weights, momentum_to_weights], -1), torch.stack([zero, carry_momentum], -1)], -2)
    mix = rearrange(mix, "b h x y -> (b h) x y")

    new_memory = []
    for mem, (delta, inputs) in zip(memory, gradient_factors(tuple(m.unbind(2)[0] for m in memory), k, v)):
        b, d_in = mem.shape[0], mem.shape[-1]
        carried = torch.bmm(mix, rearrange(mem, "b h x o i -> (b h) x (o i)"))
        scaled = rearrange(coeff[..., None] * delta[:, :, None], "b h x n o -> (b h) (x o) n")
        updated = torch.baddbmm(rearrange(carried, "bh x (o i) -> bh (x o) i", i=d_in), scaled,
                                rearrange(inputs, "b h n i -> (b h) n i"))
        new_memory.append(rearrange(updated, "(b h) (x o) i -> b h x o i", b=b, x=2))
    return tuple(new_memory)


def neural_memory_chunked(
    x: MemoryInputs, *, output_final_state: bool = False
) -> Tensor | tuple[Tensor, tuple[Weights, Weights]]:
    """Run the memory over a sequence chunk by chunk. Returns y, or (y, (weights, momentum)) with
    ``output_final_state``.

    Chunks start at position 0. A last chunk shorter than ``chunk_size`` is retrieved from and,
    when ``update_last_partial``, also applied (the layer leaves it out and buffers it instead)."""
    q, k, v, theta, eta, alpha, (weights, momentum), chunk_size, update_last_partial = x
    length = q.shape[2]
    batch, heads = q.shape[:2]
    memory = tuple(torch.stack(torch.broadcast_tensors(w, s), 2).expand(batch, heads, 2, *w.shape[-2:])
                   for w, s in zip(weights, momentum))
    ys = []
    for start in range(0, length, chunk_size):
        end = min(start + chunk_size, length)
        ys.append(memory_forward(tuple(m.unbind(2)[0] for m in memory), q[:, :, start:end]))
        if end - start == chunk_size or update_last_partial:
            part = slice(start, end)
            memory = chunk_update(memory, k[:, :, part], v[:, :, part], theta[:, :, part], eta[:, :, part],
                                  alpha[:, :, part])
    y = torch.cat(ys, 2)
    if not output_final_state:
        return y
    return y, (tuple(m[:, :, 0] for m in memory), tuple(m[:, :, 1] for m in memory))
