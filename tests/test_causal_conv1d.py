"""Depthwise causal conv1d: the reference against a direct loop, backends against the reference
(with conv state in and out, forward and backward), and stepping with causal_conv1d_update."""

from __future__ import annotations

import pytest
import torch

from ssmzoo.ops.causal_conv1d import ConvInputs, causal_conv1d, causal_conv1d_reference, causal_conv1d_update, dispatch

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
