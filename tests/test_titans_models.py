"""Titans MAC / MAG / MAL language models: causal, trainable, any length."""

from __future__ import annotations

import pytest
import torch

from ssmzoo.models import MAC, MAG, MAL

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
    with pytest.raises(ValueError, match="tokens"):
        build(MAG)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="vocab_size=11"):
        build(MAL)(torch.full((1, 4), 11))
    with pytest.raises(ValueError, match="heads"):
        MAG(vocab_size=4, d_model=16, heads=3)
    with pytest.raises(ValueError, match="memory_chunk"):
        MAG(vocab_size=4, memory_chunk=0)
