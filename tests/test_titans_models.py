"""Titans MAC / MAG / MAL language models: causal, trainable, any length; token-by-token step (after a prefill
of any length, across segment and chunk boundaries) equals forward, with constant state but the attention
cache, which MAG/MAL bound by their window and MAC by its segment."""

from __future__ import annotations

import pytest
import torch

from ssmzoo.models import MAC, MAG, MAL
from ssmzoo.modules import Attention


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead

SMALL = {"vocab_size": 11, "d_model": 16, "n_layers": 2, "heads": 2, "persistent_tokens": 2, "memory_heads": 2, "memory_depth": 2}


def build(cls):
    torch.manual_seed(0)
    extra = {"segment_len": 4} if cls is MAC else {"window": 4, "memory_chunk": 3}
    return cls(**SMALL, **extra).double()


@pytest.mark.parametrize("cls", [MAC, MAG, MAL])
def test_causal_and_shapes(cls):
    model = build(cls)
    tokens = torch.randint(0, 11, (2, 19))
    logits = model(tokens)
    assert logits.shape == (2, 19, 11) and torch.isfinite(logits).all()
    t0 = 9
    changed = tokens.clone()
    changed[:, t0:] = (changed[:, t0:] + 1) % 11
    other = model(changed)
    torch.testing.assert_close(other[:, :t0], logits[:, :t0], rtol=0, atol=1e-10)
    assert (other[:, t0] - logits[:, t0]).abs().max() > 1e-6


@pytest.mark.parametrize("cls", [MAC, MAG, MAL])
def test_memory_reaches_beyond_the_attention_span(cls):
    """With span 4, a token 12 positions back still changes the output, through the memory."""
    model = build(cls)
    tokens = torch.randint(0, 11, (1, 16))
    changed = tokens.clone()
    changed[:, 1] = (changed[:, 1] + 1) % 11
    assert (model(changed)[:, 15] - model(tokens)[:, 15]).abs().max() > 1e-8


@pytest.mark.parametrize("cls", [MAC, MAG, MAL])
def test_gradients_reach_every_parameter(cls):
    model = build(cls)
    tokens = torch.randint(0, 11, (2, 13))
    loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_bad_arguments():
    with pytest.raises(ValueError, match="variant"):
        from ssmzoo.models import TitansLM

        TitansLM("mam", vocab_size=4)
    with pytest.raises(ValueError, match="segment_len"):
        MAC(vocab_size=4, segment_len=0)
    with pytest.raises(ValueError, match="input_ids"):
        build(MAG)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="vocab_size=11"):
        build(MAL)(torch.full((1, 4), 11))
    with pytest.raises(ValueError, match="heads"):
        MAG(vocab_size=4, d_model=16, heads=3)
    with pytest.raises(ValueError, match="memory_chunk"):
        MAG(vocab_size=4, memory_chunk=0)


def flat_shapes(state):
    if isinstance(state, torch.Tensor):
        return [tuple(state.shape)]
    return [shape for s in state for shape in flat_shapes(s)]


@pytest.mark.parametrize("cls", [MAC, MAG, MAL])
def test_step_equals_forward_after_any_prefill(cls):
    """Prefill lengths 0 (init_state), 4 (a segment's end for MAC, inside a memory chunk of 3 for MAG/MAL) and 6
    (inside MAC's second segment, a chunk's end for MAG/MAL); the steps cross further boundaries."""
    model = build(cls).eval()
    tokens = torch.randint(0, 11, (2, 14))
    with torch.no_grad():
        full = model(tokens)
        for prefill in (0, 4, 6):
            if prefill:
                logits, state = model(tokens[:, :prefill], return_state=True)
                torch.testing.assert_close(logits, full[:, :prefill], rtol=0, atol=1e-12)
            else:
                state = model.init_state(2)
            outs, sizes = [], set()
            for t in range(prefill, 14):
                out, state = model.step(tokens[:, t], state)
                outs.append(out)
                sizes.add(str(flat_shapes(state)))
                attention = state[0] if cls is MAC else (state[0].attention if cls is MAG else state[1])
                keys = attention.keys.shape[2]
                assert keys <= (2 * 4 if cls is MAC else 4 - 1)  # MAC: a segment's tokens and read-outs; else the window
            torch.testing.assert_close(torch.stack(outs, 1), full[:, prefill:], rtol=0, atol=1e-12)
            assert len(sizes) == 1  # no state ever grows


@pytest.mark.parametrize("cls", [MAC, MAG, MAL])
def test_greedy_generate_equals_argmax_of_full_reruns(cls):
    model = build(cls).eval()
    prompt = torch.randint(0, 11, (2, 6))
    out = model.generate(prompt, max_new_tokens=9)
    with torch.no_grad():
        seq = prompt
        for _ in range(9):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_attention_step_with_context_equals_forward_with_context():
    """MAC's step relies on it: a context token at each position, visible from that position on."""
    torch.manual_seed(1)
    attn = Attention(16, 2, persistent_tokens=3).double()
    x, h = torch.randn(2, 7, 16, dtype=torch.float64), torch.randn(2, 7, 16, dtype=torch.float64)
    positions = torch.arange(7)
    expected = attn(x, positions, context=h, context_positions=positions)
    cache, outs = attn.init_cache(2), []
    for t in range(7):
        y, cache = attn.step(x[:, t], cache, context=h[:, t])
        outs.append(y)
    torch.testing.assert_close(torch.stack(outs, 1), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="window=None"):
        Attention(16, 2, window=4).double().step(x[:, 0], attn.init_cache(2), context=h[:, 0])


def test_bad_states():
    model = build(MAG)
    with pytest.raises(ValueError, match="one entry per stack element"):
        model.step(torch.zeros(2, dtype=torch.long), model.init_state(2)[:1])
    with pytest.raises(ValueError, match="token"):
        model.step(torch.zeros(2, 1, dtype=torch.long), model.init_state(2))
    with pytest.raises(ValueError, match="return_state"):
        model(torch.zeros(1, 3, dtype=torch.long), return_state=1)
