"""The Titans neural memory at its defaults stays alive over long streams.

With the forgetting gate initialised at α ≈ 0.018 per token (bias −4), a memory of two or more layers went exactly
silent after 2,000–5,000 tokens of a stream from a random init: forgetting shrinks every layer's weights by
(1 − α) per token, while the gradient of ‖M(k) − v‖² with respect to one layer is proportional to the other
layers' weights, so all-zero weights are a fixed point where writing stops, and forgetting outran writing into it
(the weights underflowed to 0.0). The gate now starts at α ≈ 3.4e-4 (bias −8), below the rate at which writing
regrows small weights, so the weights settle at a level where forgetting and writing balance instead.

The checks separate the two behaviours by orders of magnitude: the collapse takes the output to below 1e-3 of its
first window's within 1,000 tokens, and the weights to 0; a living memory keeps both at the same order.
"""

from __future__ import annotations

import pytest
import torch

from ssmzoo.layers.titans import NeuralMemory

F64 = torch.float64


def window_rms(y: torch.Tensor, window: int) -> torch.Tensor:
    """RMS of the output (1, length, d) over consecutive windows of ``window`` tokens."""
    length = y.shape[1] - y.shape[1] % window
    return y[0, :length].pow(2).mean(-1).view(-1, window).mean(-1).sqrt()


def check_alive(layer: NeuralMemory, y: torch.Tensor, weights: tuple[torch.Tensor, ...], window: int) -> None:
    rms = window_rms(y, window)
    assert bool((rms > 0.5 * rms[0]).all()), f"the output faded: window RMS {rms.tolist()}"
    for i, (w, w0) in enumerate(zip(weights, layer.memory_init)):
        assert w.norm() > 0.05 * w0.norm(), f"memory layer {i} collapsed: norm {w.norm():.3g} (initially {w0.norm():.3g})"


@pytest.mark.parametrize("heads", [1, 2])
def test_memory_stays_alive_over_20k_tokens_and_step_equals_forward(one_thread, heads):
    torch.manual_seed(0)
    layer = NeuralMemory(16, heads=heads).to(F64).eval()  # every other argument at its default
    x = torch.randn(1, 20_000, 16, dtype=F64)
    split = 19_600
    with torch.no_grad():
        y, state = layer(x, return_state=True)
        check_alive(layer, y, state.weights, 2_000)
        # step continues the stream from forward's state: token by token, the same outputs
        _, stepped = layer(x[:, :split], return_state=True)
        outs = []
        for t in range(split, x.shape[1]):
            out, stepped = layer.step(x[:, t], stepped)
            outs.append(out)
    torch.testing.assert_close(torch.stack(outs, 1), y[:, split:], rtol=1e-9, atol=1e-11)
    for a, b in zip(stepped.weights, state.weights):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.slow
def test_100k_tokens_through_step_at_defaults(one_thread):
    """100,000 tokens one by one through ``step``: the output non-trivial in every window of 5,000, the memory's
    weights alive at the end, and every output equal to ``forward``'s on the whole stream."""
    torch.manual_seed(1)
    layer = NeuralMemory(32).to(F64).eval()
    x = torch.randn(1, 100_000, 32, dtype=F64)
    with torch.no_grad():
        y, state = layer(x, return_state=True)
        stepped = layer.init_state(1)
        outs = []
        for t in range(x.shape[1]):
            out, stepped = layer.step(x[:, t], stepped)
            outs.append(out)
    y_step = torch.stack(outs, 1)
    check_alive(layer, y_step, stepped.weights, 5_000)
    torch.testing.assert_close(y_step, y, rtol=1e-8, atol=1e-10)
