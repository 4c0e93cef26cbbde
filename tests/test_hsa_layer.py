"""The ``hsa`` layer beyond the shared conformance suite: its output is the op's reference applied to a
memory built chunk by chunk (so chunk boundaries, offsets and head groupings are wired as documented),
a chunk's encoding does not depend on where the chunk lies, the chunk cache grows by one chunk every S
tokens, the offloaded read (only the selected chunks copied) equals the read of the whole cache, and
states are checked against the form their shapes imply."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from ssmzoo.layers import HSA
from ssmzoo.layers.hsa import HSAState, read_gathered, state_length
from ssmzoo.ops.hsa import hsa

D = 16


def _layer(**kw) -> HSA:
    torch.manual_seed(0)
    args = dict(heads=4, kv_heads=1, chunk_size=4, top_k=2, encoder_layers=1)
    return HSA(D, **{**args, **kw}).double().eval()


def _x(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kw", [dict(), dict(kv_heads=2, retrieval_heads=4, combine="softmax"),
                                dict(kv_heads=2, retrieval_dim=6, encoder_layers=0, qk_norm=True)])
def test_layer_is_the_reference_op_on_a_memory_built_chunk_by_chunk(kw):
    layer = _layer(**kw)
    S, x = layer.chunk_size, _x(2, 23)
    n = x.shape[1] // S
    keys, values, landmarks = zip(*(layer.memory.encode(x[:, None, i * S:(i + 1) * S]) for i in range(n)))
    q = rearrange(layer.read.q_proj(x), "b t (h e) -> b t h e", e=layer.head_dim)
    if layer.read.q_norm is not None:
        q = layer.read.q_norm(q)
    sq = rearrange(layer.proj_selection(x), "b t (h e) -> b t h e", e=layer.retrieval_dim)
    o = hsa(q, torch.cat(keys, 1), torch.cat(values, 1), torch.cat(landmarks, 1), chunk_size=S,
            top_k=layer.top_k, combine=layer.combine, selection_q=sq, backend="reference")
    expected = layer.out_proj(rearrange(o, "b t h e -> b t (h e)"))
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    assert expected[:, :S].abs().max() == 0  # nothing is past before the first chunk ends
    assert expected[:, S:].abs().min(-1).values.min() > 0


def test_a_chunk_is_encoded_the_same_wherever_it_lies():
    layer = _layer()
    S, x = layer.chunk_size, _x(1, 16)
    moved = torch.cat([x[:, 3 * S:], x[:, S:3 * S], x[:, :S]], 1)  # chunk 3 first, chunk 0 last
    _, state = layer(x, return_state=True)
    _, state_moved = layer(moved, return_state=True)
    torch.testing.assert_close(state_moved.keys[:, :S], state.keys[:, 3 * S:], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state_moved.landmarks[:, 3], state.landmarks[:, 0], rtol=1e-12, atol=1e-12)


def test_the_cache_grows_by_one_chunk_every_chunk_size_tokens():
    layer = _layer()
    S, x = layer.chunk_size, _x(2, 3 * 4 + 2)
    state = layer.init_state(2)
    for t in range(x.shape[1]):
        _, state = layer.step(x[:, t], state)
        seen = t + 1
        assert state.keys.shape == (2, seen // S * S, 1, layer.head_dim) and state.values.shape == state.keys.shape
        assert state.landmarks.shape[1] == seen // S and state.pending.shape[1] == seen % S
        assert state_length(state, S) == seen


@pytest.mark.parametrize("heads,kv_heads,retrieval_heads", [(4, 1, 1), (4, 1, 2), (4, 2, 4), (2, 2, 2)])
def test_the_offloaded_read_equals_the_read_of_the_whole_cache(heads, kv_heads, retrieval_heads):
    """read_gathered copies only the selected chunks (what a GPU step does with its cache on the CPU)."""
    layer = _layer(heads=heads, kv_heads=kv_heads, retrieval_heads=retrieval_heads, top_k=3)
    S, x = layer.chunk_size, _x(3, 29)
    for position in (2, S, 2 * S + 1, 28):  # no chunk, one, fewer than K, more than K
        _, memory = layer(x[:, :position], return_state=True)
        x_t = x[:, position]
        q = rearrange(layer.read.q_proj(x_t[:, None]), "b t (h e) -> b t h e", e=layer.head_dim)
        sq = rearrange(layer.proj_selection(x_t[:, None]), "b t (h e) -> b t h e", e=layer.retrieval_dim)
        gathered = read_gathered(q, sq, memory, S, layer.top_k, layer.combine, position, "reference")
        whole = hsa(q, memory.keys, memory.values, memory.landmarks, chunk_size=S, top_k=layer.top_k,
                    combine=layer.combine, offset=position, selection_q=sq, backend="reference")
        torch.testing.assert_close(gathered, whole, rtol=1e-10, atol=1e-10)
        direct = layer.read.step(x_t, memory, sq[:, 0], position, gather=False)
        torch.testing.assert_close(layer.read.step(x_t, memory, sq[:, 0], position, gather=True), direct,
                                   rtol=1e-10, atol=1e-10)


def test_states_are_checked_against_the_form_their_shapes_imply():
    layer = _layer()
    x = _x(2, 9)
    _, state = layer(x, return_state=True)  # 2 chunks of 4, 1 pending
    layer(x, state=state)  # fine
    bad = [
        (state._replace(pending=torch.zeros(2, 4, D, dtype=torch.float64)), "pending"),  # a full chunk pending
        (state._replace(keys=state.keys[:, :5]), "keys"),  # not 2 chunks of keys
        (state._replace(values=state.values[:, :4]), "values"),
        (state._replace(landmarks=state.landmarks[:, :1]), "keys"),  # 1 landmark, 2 chunks of keys
        (state._replace(keys=state.keys.float()), "keys"),
        (tuple(state), "init_state"),
    ]
    for s, field in bad:
        with pytest.raises(ValueError, match="init_state") as info:
            layer(x, state=s)
        assert field in str(info.value) and "hsa" in str(info.value)
    with pytest.raises(ValueError, match="batch size 1"):
        layer.step(x[:, 0], HSAState(*(t[:1] for t in state)))


def test_cache_device_cpu_keeps_keys_and_values_on_the_cpu():
    layer = _layer(cache_device="cpu")
    _, state = layer(_x(1, 9), return_state=True)
    assert state.keys.device.type == "cpu" and state.values.device.type == "cpu"
    with pytest.raises(ValueError, match="cache_device"):
        _layer(cache_device="no-such-device")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offloaded_cache_on_a_gpu_steps_like_forward():
    torch.manual_seed(0)
    layer = HSA(D, heads=4, kv_heads=1, chunk_size=4, top_k=2, cache_device="cpu").cuda().eval()
    x = torch.randn(2, 21, D, device="cuda")
    y, final = layer(x, return_state=True)
    state = layer.init_state(2)
    assert state.keys.device.type == "cpu" and state.landmarks.device.type == "cuda"
    outs = []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        outs.append(y_t)
    torch.testing.assert_close(torch.stack(outs, 1), y, rtol=1e-4, atol=1e-4)
    assert final.keys.device.type == "cpu" and state.keys.device.type == "cpu"


def test_encoder_checkpoint_gives_the_same_outputs_and_gradients(monkeypatch):
    import ssmzoo.layers.hsa as hsa_module

    monkeypatch.setattr(hsa_module, "ENCODER_BLOCK_TOKENS", 8)  # blocks of 2 chunks of 4
    x = _x(2, 27)
    grads = []
    for encoder_checkpoint in (False, True):
        layer = _layer(encoder_checkpoint=encoder_checkpoint).train()
        xx = x.clone().requires_grad_()
        y = layer(xx)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        grads.append((y.detach(), xx.grad, {k: p.grad for k, p in layer.named_parameters()}))
    (y0, gx0, gp0), (y1, gx1, gp1) = grads
    torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx1, gx0, rtol=1e-10, atol=1e-12)
    for k in gp0:
        torch.testing.assert_close(gp1[k], gp0[k], rtol=1e-10, atol=1e-12)
