"""Depthwise causal conv1d: the reference against a direct loop, backends against the reference
(with conv state in and out, forward and backward), and stepping with causal_conv1d_update."""

from __future__ import annotations

import pytest
import torch

from ssmzoo.ops.causal_conv1d import ConvInputs, causal_conv1d, causal_conv1d_reference, causal_conv1d_update, dispatch
from ssmzoo.ops.dispatch import Request
from ssmzoo.ops.segments import Segments

CPU_BACKENDS = [n for n in dispatch.backends if n != "reference" and "cpu" in dispatch.backends[n].devices]


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_reference_matches_direct_loop():
    x, w, b, s = rand(2, 3, 6), rand(3, 4, seed=1), rand(3, seed=2), rand(2, 3, 3, seed=3)
    y, final = causal_conv1d_reference(ConvInputs(x, w, b, None, s), output_final_state=True)
    xp = torch.cat([s, x], -1)
    for t in range(6):
        want = b + sum(w[:, k] * xp[:, :, t + k] for k in range(4))
        torch.testing.assert_close(y[:, :, t], want)
    torch.testing.assert_close(final, x[:, :, -3:])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("length,width", [(1, 4), (7, 4), (2, 4), (9, 1), (5, 2)])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_backend_matches_reference(backend, length, width, activation):
    leaves = [rand(2, 3, length), rand(3, width, seed=1), rand(3, seed=2), rand(2, 3, width - 1, seed=3)]
    outs = {}
    for name in ("reference", backend):
        ins = [t.clone().requires_grad_(True) for t in leaves]
        y, final = causal_conv1d(*ins[:3], activation, initial_state=ins[3], output_final_state=True, backend=name)
        loss = (y * rand(*y.shape, seed=4)).sum() + (final * rand(*final.shape, seed=5)).sum()
        outs[name] = (y, final, *torch.autograd.grad(loss, ins))
    for a, b in zip(outs["reference"], outs[backend]):
        torch.testing.assert_close(b, a)


def test_update_steps_match_whole_sequence():
    x, w, b = rand(2, 3, 6), rand(3, 4, seed=1), rand(3, seed=2)
    y, final = causal_conv1d(x, w, b, "silu", output_final_state=True)
    state = torch.zeros(2, 3, 3, dtype=torch.float64)
    steps = []
    for t in range(6):
        y_t, state = causal_conv1d_update(x[:, :, t], state, w, b, "silu")
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, -1), y)
    torch.testing.assert_close(state, final)


def test_bad_arguments_raise_value_error():
    x, w = rand(2, 3, 6), rand(3, 4)
    with pytest.raises(ValueError, match="initial_state"):
        causal_conv1d(x, w, initial_state=torch.zeros(2, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, w, activation="gelu")
    with pytest.raises(ValueError, match="channels"):
        causal_conv1d(x, rand(4, 4))
    with pytest.raises(ValueError, match="conv_state"):
        causal_conv1d_update(x[:, :, 0], torch.zeros(2, 3, 2, dtype=torch.float64), w)


# -- packed documents: no tap reads across a document start ----------------------------------------
PACKED = [[[1, 2, 8], [11]], [[3, 8], [1, 1, 9]], [[11], [10, 1]]]


def packed_outputs(backend, lengths, width, with_state):
    segments = Segments.from_lengths(lengths, 11)
    leaves = [rand(2, 3, 11), rand(3, width, seed=1), rand(3, seed=2), rand(segments.num_docs, 3, width - 1, seed=3)]
    ins = [t.clone().requires_grad_(True) for t in leaves]
    y, final = causal_conv1d(*ins[:3], "silu", initial_state=ins[3] if with_state else None, output_final_state=True,
                             segments=segments, backend=backend)
    loss = (y * rand(*y.shape, seed=4)).sum() + (final * rand(*final.shape, seed=5)).sum()
    grads = torch.autograd.grad(loss, ins if with_state else ins[:3], allow_unused=True, materialize_grads=True)
    return segments, leaves, (y, final, *grads)


@pytest.mark.parametrize("lengths", PACKED)
@pytest.mark.parametrize("width", [1, 2, 4])
def test_packed_reference_runs_each_document_alone(lengths, width):
    segments, (x, w, b, states), (y, final, *_) = packed_outputs("reference", lengths, width, True)
    for k, (row, t0, t1) in enumerate(segments.spans):
        y_doc, final_doc = causal_conv1d(x[row : row + 1, :, t0:t1], w, b, "silu", initial_state=states[k : k + 1],
                                         output_final_state=True, backend="reference")
        torch.testing.assert_close(y[row : row + 1, :, t0:t1], y_doc, rtol=0, atol=0)
        torch.testing.assert_close(final[k : k + 1], final_doc, rtol=0, atol=0)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if dispatch.backends[b].capabilities.segments])
@pytest.mark.parametrize("lengths", PACKED)
@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("with_state", [True, False])
def test_packed_backend_matches_reference(backend, lengths, width, with_state):
    want = packed_outputs("reference", lengths, width, with_state)[2]
    got = packed_outputs(backend, lengths, width, with_state)[2]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_the_causal_conv1d_package_declines_packed_documents():
    packed = Request(torch.device("cuda"), torch.float32, segments=True)
    with pytest.raises(ValueError, match="packed documents"):
        dispatch.choose("causal_conv1d", packed)
    with pytest.raises(ValueError, match=r"initial_state must be \(num_docs=4"):
        causal_conv1d(rand(2, 3, 11), rand(3, 4), initial_state=rand(2, 3, 3), segments=Segments.from_lengths(PACKED[0], 11))
