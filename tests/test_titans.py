"""Titans neural memory: the chunked op against the literal per-token rule (forward and backward),
stream semantics of the layer, and test-time memorisation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ssmzoo import NeuralMemory
from ssmzoo.ops.neural_memory import MemoryInputs, memory_forward, neural_memory, neural_memory_chunked, neural_memory_reference

F64 = torch.float64


def run(fn, q, k, v, theta, eta, alpha, weights, momentum, chunk_size):
    """(y, final weights, final momentum) from a backend function (which takes MemoryInputs) or the op."""
    if fn is neural_memory:
        y, (w, s) = fn(q, k, v, theta, eta, alpha, chunk_size=chunk_size, initial_state=(weights, momentum),
                       output_final_state=True)
    else:
        y, (w, s) = fn(MemoryInputs(q, k, v, theta, eta, alpha, (weights, momentum), chunk_size),
                       output_final_state=True)
    return y, w, s


def memory_inputs(b=2, h=3, length=13, d=4, hidden=6, depth=2, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=F64) * scale).requires_grad_(requires_grad)

    q, k, v = rnd(b, h, length, d), rnd(b, h, length, d), rnd(b, h, length, d)
    k = torch.nn.functional.normalize(k, dim=-1)
    # gates in their working ranges: a small step, any momentum, little forgetting
    theta = (0.1 * torch.rand(b, h, length, generator=g, dtype=F64)).requires_grad_(requires_grad)
    eta = (0.05 + 0.9 * torch.rand(b, h, length, generator=g, dtype=F64)).requires_grad_(requires_grad)
    alpha = (0.2 * torch.rand(b, h, length, generator=g, dtype=F64)).requires_grad_(requires_grad)
    dims = [d] + [hidden] * (depth - 1) + [d]
    weights = tuple(rnd(b, h, o, i, scale=1 / math.sqrt(i)) for i, o in itertools.pairwise(dims))
    momentum = tuple(rnd(b, h, o, i, scale=0.1) for i, o in itertools.pairwise(dims))
    return q, k, v, theta, eta, alpha, weights, momentum


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("chunk_size", [1, 3, 5, 13, 20])
def test_chunked_equals_per_token_rule(depth, chunk_size):
    """chunk_size=1 is the paper's per-token rule; larger chunks take every gradient at the chunk's
    starting weights, which the reference loop also does literally."""
    args = memory_inputs(depth=depth)
    y_ref, w_ref, s_ref = run(neural_memory_reference, *args, chunk_size=chunk_size)
    y, w, s = run(neural_memory_chunked, *args, chunk_size=chunk_size)
    torch.testing.assert_close(y, y_ref, rtol=1e-8, atol=1e-8)
    for a, b in zip(w + s, w_ref + s_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_chunked_backward_equals_per_token_rule(chunk_size):
    """Gradients through the memory updates (second order through the inner gradients) agree."""
    args = memory_inputs(length=9, depth=2, requires_grad=True)
    leaves = [t for t in args[:6]] + list(args[6]) + list(args[7])
    g = torch.Generator().manual_seed(5)
    outs = []
    for fn in (neural_memory_reference, neural_memory_chunked):
        y, w, s = run(fn, *args, chunk_size=chunk_size)
        probe = sum((t * torch.randn(t.shape, generator=g.manual_seed(i), dtype=F64)).sum()
                    for i, t in enumerate((y, *w, *s)))
        outs.append(torch.autograd.grad(probe, leaves))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_chunked_gradcheck():
    q, k, v, theta, eta, alpha, weights, momentum = memory_inputs(b=1, h=1, length=5, d=2, hidden=3,
                                                                  requires_grad=True)

    def fn(q, k, v, theta, eta, alpha, w0, w1):
        y, w, s = run(neural_memory_chunked, q, k, v, theta, eta, alpha, (w0, w1), momentum, chunk_size=2)
        return y, w[0], s[1]

    assert torch.autograd.gradcheck(fn, (q, k, v, theta, eta, alpha, *weights))


def layer(chunk_size=5, **overrides):
    torch.manual_seed(0)
    args = {"d_model": 8, "heads": 2, "memory_depth": 2, "chunk_size": chunk_size, "conv_kernel": 3}
    args.update(overrides)
    return NeuralMemory(**args).double()


def test_stream_in_pieces_and_steps_equals_whole():
    """Forward on pieces of any length, mixed with single steps, continues the stream exactly."""
    mem = layer(chunk_size=5)
    x = torch.randn(2, 31, 8, dtype=F64)
    y, final = mem(x, return_state=True)
    state, outs, t = mem.init_state(2), [], 0
    for piece in [3, 1, 1, 7, 5, 2, 0, 11]:  # 0: one step
        if piece == 0:
            y_t, state = mem.step(x[:, t], state)
            outs.append(y_t[:, None])
            t += 1
        else:
            y_p, state = mem(x[:, t : t + piece], state=state, return_state=True)
            outs.append(y_p)
            t += piece
    assert t == 31
    torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-9, atol=1e-9)
    for a, b in zip(torch.utils._pytree.tree_leaves(state), torch.utils._pytree.tree_leaves(final)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert int(final.filled[0]) == 31 % 5


def test_reads_use_the_weights_before_the_chunk():
    """Tokens of one chunk never influence each other's read-outs; the next chunk sees them."""
    mem = layer(chunk_size=4, conv_kernel=0)
    x = torch.randn(1, 12, 8, dtype=F64)
    x2 = x.clone()
    x2[:, 4] += 1.0  # first token of the second chunk
    d = (mem(x2) - mem(x)).abs().amax(-1)[0]
    assert d[:4].max() == 0 and d[5:8].max() == 0  # same chunk: only its own output moves
    assert d[4] > 1e-6 and d[8:].min() > 1e-8  # later chunks read the updated memory


def test_outer_gradients_flow_through_memory_updates():
    """The initial memory weights get gradient from later chunks' read-outs, i.e. through the
    inner gradient steps, not only from the first chunk's direct read."""
    mem = layer(chunk_size=4, conv_kernel=0)
    x = torch.randn(1, 12, 8, dtype=F64)
    y = mem(x)
    y[:, 8:].sum().backward()  # chunks 2 only: reads weights updated twice
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mem.memory_init)
    assert mem.to_gates.weight.grad.abs().sum() > 0


def test_bad_arguments():
    for bad, match in [
        ({"heads": 3}, "heads"),
        ({"memory_depth": 0}, "memory_depth"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"conv_kernel": -1}, "conv_kernel"),
        ({"max_lr": 0.0}, "max_lr"),
    ]:
        with pytest.raises(ValueError, match=match):
            layer(**bad)


def memorise(n_pairs: int, depth: int, d: int = 16, epochs: int = 20) -> float:
    """Write n_pairs random (unit key → Gaussian value) pairs at test time by running the memory
    over them ``epochs`` times (chunks of 4 tokens), then read every key back; returns the mean relative error
    ‖M(k) − v‖² / ‖v‖² (1.0 = knowing nothing, the zero read-out)."""
    g = torch.Generator().manual_seed(n_pairs)
    k = torch.nn.functional.normalize(torch.randn(1, 1, n_pairs, d, generator=g, dtype=F64), dim=-1)
    v = torch.randn(1, 1, n_pairs, d, generator=g, dtype=F64)
    keys, values = k.repeat(1, 1, epochs, 1), v.repeat(1, 1, epochs, 1)
    full = torch.ones(1, 1, keys.shape[2], dtype=F64)
    theta, eta, alpha = full * (0.25 if depth == 1 else 0.05), full * 1e-6, full * 1e-6  # plain SGD
    dims = [d] + [4 * d] * (depth - 1) + [d]
    scale = 0.0 if depth == 1 else 1.0
    weights = tuple(torch.randn(1, 1, o, i, generator=g, dtype=F64) * scale / math.sqrt(i)
                    for i, o in itertools.pairwise(dims))
    momentum = tuple(torch.zeros_like(w) for w in weights)
    _, weights, _ = run(neural_memory, keys, keys, values, theta, eta, alpha, weights, momentum, chunk_size=4)
    return ((memory_forward(weights, k) - v).pow(2).sum(-1) / v.pow(2).sum(-1)).mean().item()


def test_memorisation_degrades_gradually():
    """Measured (d=16, 2-layer memory of width 64, 20 passes): 4 pairs 0.0000, 8: 0.0009, 16: 0.063,
    32: 0.20, 64: 0.46. Few pairs are recalled almost exactly; past capacity the error grows
    smoothly and stays well below knowing nothing (1.0); it never breaks (NaN, blow-up)."""
    errors = {n: memorise(n, depth=2) for n in (4, 8, 16, 32, 64)}
    assert errors[4] < 1e-3 and errors[8] < 1e-2
    assert errors[16] < 0.15 and errors[32] < 0.35 and errors[64] < 0.65
    assert errors[64] > 0.25  # it is over capacity, and that shows
    ordered = [errors[n] for n in (4, 8, 16, 32, 64)]
    assert all(b >= a for a, b in itertools.pairwise(ordered))  # monotone
    assert all(b - a < 0.4 for a, b in itertools.pairwise(ordered))  # no cliff between doublings


def test_linear_memory_capacity():
    """A linear memory (a 16×16 matrix) stores up to ~d pairs: measured 8 pairs 0.0021,
    32: 0.68 (worse than the 2-layer MLP's 0.20 at 32, the paper's case for deep memory)."""
    assert memorise(8, depth=1) < 0.02
    linear_32 = memorise(32, depth=1)
    assert 0.5 < linear_32 < 0.9
    assert memorise(32, depth=2) < linear_32 - 0.2


def test_state_fill_count_is_checked():
    mem = layer(chunk_size=4)
    x = torch.randn(2, 6, 8, dtype=F64)
    _, state = mem(x, return_state=True)
    for filled in (torch.tensor([2, 3]), torch.tensor([4, 4]), torch.tensor([-1, -1])):
        with pytest.raises(ValueError, match="filled"):
            mem(x, state=state._replace(filled=filled))


def test_read_out_norms_each_head_alone():
    """The read-out RMS norm runs per memory head (a group of d_head channels): scaling one head's
    memory output leaves the other head's normalised read-out unchanged."""
    mem = layer()
    y = torch.randn(1, 2, 3, 4, dtype=F64)  # (batch, heads, length, d_head)
    scaled = y.clone()
    scaled[:, 0] *= 10
    a, b = mem.norm(y.permute(0, 2, 1, 3).flatten(2)), mem.norm(scaled.permute(0, 2, 1, 3).flatten(2))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # each group normalised alone: the scale drops out
    assert mem.norm.group_size == 4 and list(mem.state_dict()).count("norm.weight") == 1


@pytest.mark.parametrize("out_in", [(3, 5), (256, 300)])  # a vecdot, and a BLAS dot per (batch, head) from 2^16 on
@pytest.mark.parametrize("t_batch", [1, 2])  # the learned initial weights are shared by the batch
def test_chunked_scalar_gradient_dots_equal_sums(out_in, t_batch):
    from ssmzoo.ops.neural_memory.chunked import _dot

    g = torch.randn(2, 3, *out_in, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.randn(t_batch, 3, *out_in, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = (g * t).sum((-2, -1), keepdim=True)
    torch.testing.assert_close(_dot(g, t), want)
    torch.testing.assert_close(_dot(g, t.expand_as(g)), want)
