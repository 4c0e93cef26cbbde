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
from torch import Tensor

from ..chunks import segsum
from .inputs import MemoryInputs, Weights


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
    return _factors_and_read(weights, k, v, None)[0]


def _factors_and_read(weights: Weights, k: Tensor, v: Tensor,
                      q: Tensor | None) -> tuple[list[tuple[Tensor, Tensor]], Tensor | None]:
    """gradient_factors, and with q also M(q) at the same weights: the keys and queries go through the MLP
    as one batch of rows (one matmul per layer instead of two, and one gradient per weight in backward)."""
    n = k.shape[2]
    inputs, pre = [], []  # the keys' input of each layer, and the pre-activation it was computed from
    x = k if q is None else torch.cat([k, q], 2)
    for i, w in enumerate(weights):
        if i > 0:
            pre.append(x[:, :, :n])
            x = F.silu(x)
        inputs.append(x[:, :, :n])
        x = torch.einsum("bhoi,bhni->bhno", w, x)
    delta = 2 * (x[:, :, :n] - v)  # dℓ/dM(k)
    factors: list[tuple[Tensor, Tensor]] = []
    for i in range(len(weights) - 1, -1, -1):
        factors.append((delta, inputs[i]))
        if i > 0:
            delta = torch.einsum("bhno,bhoi->bhni", delta, weights[i]) * _silu_grad(pre[i - 1])
    return factors[::-1], (None if q is None else x[:, :, n:])


def chunk_update(weights: Weights, momentum: Weights, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor,
                 alpha: Tensor) -> tuple[Weights, Weights]:
    """Apply one chunk of n tokens, every gradient at the chunk's starting weights.

    ``weights``, ``momentum``: per MLP layer (batch, heads, out, in). Per layer, with per-(batch, head)
    scalars and one matmul for both weighted sums of the per-token gradients δ_i ⊗ a_i:
        M_n = Π(1−α) M_0 + [Σ_t Π_{t<j}(1−α_j) Π_{j≤t} η_j] S_0 − Σ_i c_i θ_i δ_i ⊗ a_i
        S_n = Π η S_0 − Σ_i d_i θ_i δ_i ⊗ a_i
    (the momentum S_0's share of M_n is carried through every token's forgetting). Weights and
    momentum stay separate tensors, so autograd never splits or stacks a whole memory.
    Returns the new (weights, momentum)."""
    return _update(weights, momentum, k, v, theta, eta, alpha, None)[:2]


def _update(weights: Weights, momentum: Weights, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
            q: Tensor | None) -> tuple[Weights, Weights, Tensor | None]:
    """chunk_update, and with q also the read-out M_0(q) (see _factors_and_read)."""
    log_eta = torch.cumsum(torch.log(eta), -1)  # log Π_{j≤t} η_j
    log_keep = torch.cumsum(torch.log1p(-alpha), -1)  # log Π_{j≤t} (1 − α_j)
    # momentum_decay[t, i] = Π_{i<j≤t} η_j for i ≤ t (exponent ≤ 0, so no overflow), else 0
    momentum_decay = segsum(torch.log(eta)).exp()
    keep_to_end = torch.exp(log_keep[..., -1:] - log_keep)  # Π_{t<j≤n} (1 − α_j)
    to_weights = torch.einsum("bht,bhti->bhi", keep_to_end, momentum_decay) * theta  # c_i θ_i: g_i's share of M_n
    to_momentum = momentum_decay[..., -1, :] * theta  # d_i θ_i: g_i's share of S_n
    coeff = -torch.stack([to_weights, to_momentum], -1)  # (b, h, n, 2)

    scalar = lambda t: t[..., None, None]  # noqa: E731  (b, h) -> broadcast over (out, in)
    carry_weights = scalar(log_keep[..., -1].exp())  # Π (1 − α): M_0's share of M_n
    carry_momentum = scalar(log_eta[..., -1].exp())  # Π η: S_0's share of S_n
    momentum_to_weights = scalar((keep_to_end * log_eta.exp()).sum(-1))  # S_0's share of M_n

    new_weights, new_momentum = [], []
    factors, read = _factors_and_read(weights, k, v, q)
    for w, s, (delta, inputs) in zip(weights, momentum, factors):
        # Σ_i c_i θ_i δ_i ⊗ a_i as one matmul (out, n) @ (n, in), and likewise with d_i
        to_w = torch.matmul((coeff[..., 0:1] * delta).transpose(-1, -2), inputs)
        to_s = torch.matmul((coeff[..., 1:2] * delta).transpose(-1, -2), inputs)
        new_w, new_s = _Carry.apply(to_w, to_s, carry_weights, w, momentum_to_weights, carry_momentum, s)
        new_weights.append(new_w)
        new_momentum.append(new_s)
    return tuple(new_weights), tuple(new_momentum), read


def _dot(g: Tensor, t: Tensor) -> Tensor:
    """Σ_{o,i} g t per (batch, head) as (b, h, 1, 1); g contiguous (b, h, o, i), t (batch or 1, h, o, i)."""
    b, h = g.shape[:2]
    gf, tf = g.view(b, h, -1), t.reshape(t.shape[0], h, -1)
    if gf.shape[-1] >= 1 << 16:
        # Large memories: a BLAS dot per (batch, head) reads each operand once, without a product tensor
        # (half vecdot's time at dim 384; an einsum here was a batched matmul over copies, 6x).
        return torch.stack([torch.dot(gf[i, j], tf[i % tf.shape[0], j]) for i in range(b) for j in range(h)]).view(b, h, 1, 1)
    return torch.linalg.vecdot(gf, tf)[..., None, None]


class _Carry(torch.autograd.Function):
    """One layer's end-of-chunk weights and momentum from the chunk's gradient sums:
        new_w = to_w + a·w + b·s,   new_s = to_s + c·s
    with a, b, c per (batch, head) (shape (b, h, 1, 1)). One function for both, so the backward forms the
    momentum's gradient in one pass and a whole-memory gradient is never accumulated by autograd twice;
    the scalars' gradients are dot products."""

    @staticmethod
    def forward(ctx, to_w: Tensor, to_s: Tensor, a: Tensor, w: Tensor, b: Tensor, c: Tensor,
                s: Tensor) -> tuple[Tensor, Tensor]:
        new_w = torch.addcmul(to_w, a, w).addcmul_(b, s)
        new_s = torch.addcmul(to_s, c, s)
        ctx.save_for_backward(a, w, b, c, s)
        ctx.set_materialize_grads(False)  # the last chunk's momentum is often unused: no zero gradient for it
        return new_w, new_s

    @staticmethod
    def backward(ctx, gw: Tensor | None, gs: Tensor | None):
        a, w, b, c, s = ctx.saved_tensors
        need = ctx.needs_input_grad
        # the gradients arrive transposed from the matmuls' backward; each is read several times below
        gw = None if gw is None else gw.contiguous()
        gs = None if gs is None else gs.contiguous()
        grads: list[Tensor | None] = [None] * 7
        if gw is not None:
            grads[0] = gw if need[0] else None
            grads[2] = _dot(gw, w).sum_to_size(a.shape) if need[2] else None
            grads[3] = (gw * a).sum_to_size(w.shape) if need[3] else None
            grads[4] = _dot(gw, s).sum_to_size(b.shape) if need[4] else None
        if gs is not None:
            grads[1] = gs if need[1] else None
            grads[5] = _dot(gs, s).sum_to_size(c.shape) if need[5] else None
        if need[6] and (gw is not None or gs is not None):
            ds = gw * b if gw is not None else None
            if gs is not None:
                ds = gs * c if ds is None else ds.addcmul_(gs, c)
            grads[6] = ds.sum_to_size(s.shape)
        return tuple(grads)


def neural_memory_chunked(
    x: MemoryInputs, *, output_final_state: bool = False
) -> Tensor | tuple[Tensor, tuple[Weights, Weights]]:
    """Run the memory over a sequence chunk by chunk. Returns y, or (y, (weights, momentum)) with
    ``output_final_state``.

    Chunks start at position 0. A last chunk shorter than ``chunk_size`` is retrieved from and,
    when ``update_last_partial``, also applied (the layer leaves it out and buffers it instead)."""
    q, k, v, theta, eta, alpha, (weights, momentum), chunk_size, update_last_partial = x
    batch, heads = q.shape[:2]
    weights = tuple(w.expand(batch, heads, *w.shape[-2:]) for w in weights)
    momentum = tuple(s.expand(batch, heads, *s.shape[-2:]) for s in momentum)
    ys = []
    # split, not slices: autograd then joins the chunks' gradients once instead of adding each into a zero
    # tensor of the whole sequence
    chunks = zip(*(t.split(chunk_size, 2) for t in (q, k, v, theta, eta, alpha)))
    for qc, kc, vc, theta_c, eta_c, alpha_c in chunks:
        if qc.shape[2] == chunk_size or update_last_partial:
            weights, momentum, y = _update(weights, momentum, kc, vc, theta_c, eta_c, alpha_c, qc)
        else:
            y = memory_forward(weights, qc)
        ys.append(y)
    y = torch.cat(ys, 2)
    return (y, (weights, momentum)) if output_final_state else y
