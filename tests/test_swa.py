"""The sliding-window attention layer (``swa``) beyond the shared conformance suite: the window rule, its
equivalence with full causal attention when the window covers the sequence, the blocked long-input path
against one attention call, and a decoding state that never grows."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from ssmzoo.layers import SWA
from ssmzoo.modules import Attention


def _layer(window: int, **kw) -> SWA:
    torch.manual_seed(0)
    return SWA(16, heads=4, window=window, **kw).double().eval()


def test_window_rule():
    """The output at t depends on x[t − window + 1 .. t] and on nothing earlier."""
    layer, w, t = _layer(6), 6, 20
    x = torch.randn(1, 24, 16, dtype=torch.float64)
    y = layer(x)
    far = x.clone()
    far[:, : t - w + 1] += torch.randn_like(far[:, : t - w + 1])
    torch.testing.assert_close(layer(far)[:, t], y[:, t], rtol=0, atol=1e-12)
    near = x.clone()
    near[:, t - w + 1] += 1.0
    assert (layer(near)[:, t] - y[:, t]).abs().max() > 1e-6


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_a_window_over_the_whole_sequence_is_causal_attention(kv_heads):
    layer = _layer(64, kv_heads=kv_heads)
    full = Attention(16, 4, kv_heads=kv_heads, causal=True, window=None).double()
    full.load_state_dict(layer.attn.state_dict())
    x = torch.randn(2, 30, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x), full(x), rtol=1e-10, atol=1e-10)
    y, _ = layer(x, return_state=True)  # the cached path
    torch.testing.assert_close(y, full(x), rtol=1e-10, atol=1e-10)


def test_long_inputs_in_blocks_equal_one_attention_call(monkeypatch):
    layer = _layer(5)
    x = torch.randn(2, 37, 16, dtype=torch.float64)
    whole = layer.attn(x)  # one call, the (37 × 37) mask
    monkeypatch.setattr(SWA, "block_size", 4)  # blocks of max(4, window) = 5 queries
    torch.testing.assert_close(layer(x), whole, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("window, kw", [(5, {}), (3, dict(kv_heads=2, persistent_tokens=2)), (1, {})])
def test_compiled_blocks_equal_the_eager_loop(monkeypatch, window, kw):
    """Compiled, the blocks of a long input (or of any input with a state) are one batched call: outputs, final
    state and gradients equal the eager loop's, from a state and across lengths that end mid-block; a new length
    compiles again at most once (Dynamo specialises a dimension of size 1: one block, or several)."""
    monkeypatch.setattr(SWA, "block_size", 4)  # blocks of max(4, window) queries
    layer = _layer(window, **kw).train()
    with torch.no_grad():
        _, state = layer(torch.randn(2, 6, 16, dtype=torch.float64), return_state=True)
    counter = CompileCounter()
    compiled = torch.compile(layer, backend=counter, fullgraph=True)
    for n in (9, 13, 4, 22):
        x = torch.randn(2, n, 16, dtype=torch.float64, requires_grad=True)
        torch._dynamo.mark_dynamic(x, 1)
        got_y, got_state = compiled(x, state=state, return_state=True)
        want_y, want_state = layer(x, state=state, return_state=True)
        torch.testing.assert_close(got_y, want_y, rtol=1e-10, atol=1e-10)
        for a, b in zip(got_state, want_state):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        g = torch.randn_like(want_y)
        params = [p for p in layer.parameters()]
        got_grads = torch.autograd.grad((got_y * g).sum() + got_state.keys.sum(), [x, *params])
        want_grads = torch.autograd.grad((want_y * g).sum() + want_state.keys.sum(), [x, *params])
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert counter.frame_count <= 2  # 4 lengths: the loop compiled once per number of blocks
    torch._dynamo.reset()


def test_decoding_state_has_a_fixed_size():
    layer = _layer(4)
    state = layer.init_state(2)
    shapes = [t.shape for t in state]
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    for t in range(x.shape[1]):
        _, state = layer.step(x[:, t], state)
        assert [s.shape for s in state] == shapes
    assert state.position.tolist() == [11, 11]


def test_bad_arguments_name_the_layer():
    for kw, match in [(dict(heads=3), "heads"), (dict(kv_heads=3), "kv_heads"), (dict(window=0), "window"),
                      (dict(heads=4, head_dim=3), "even head_dim")]:
        with pytest.raises(ValueError, match=match) as info:
            SWA(16, **{"heads": 4, **kw})
        assert "SWA" in str(info.value)
