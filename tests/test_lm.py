"""LanguageModel: streaming forward == step, greedy generation == argmax of full re-runs, sampling."""

from __future__ import annotations

import pytest
import torch

import ssmzoo
from ssmzoo.models import LanguageModel


def tiny(layer="mamba", layer_args=None, seed=0, vocab=11):
    torch.manual_seed(seed)
    args = layer_args if layer_args is not None else dict(d_state=4, d_conv=3)
    return LanguageModel(vocab_size=vocab, d_model=8, n_layers=2, layer=layer, layer_args=args).double().eval()


def test_exported():
    assert ssmzoo.LanguageModel is LanguageModel


def test_tied_head_and_shapes():
    model = tiny()
    assert model.lm_head.weight is model.embedding.weight
    logits = model(torch.randint(0, 11, (3, 7)))
    assert logits.shape == (3, 7, 11)


@pytest.mark.parametrize("layer,args", [("mamba", dict(d_state=4, d_conv=3)), ("s4d", dict(d_state=4))])
def test_step_and_continuation_match_forward(layer, args):
    model = tiny(layer, args)
    tokens = torch.randint(0, 11, (2, 12))
    logits, final = model(tokens, return_state=True)
    a, s = model(tokens[:, :5], return_state=True)
    b, s = model(tokens[:, 5:], state=s, return_state=True)
    torch.testing.assert_close(torch.cat([a, b], 1), logits, rtol=1e-9, atol=1e-9)
    state = model.init_state(2)
    outs = []
    for t in range(tokens.shape[1]):
        out, state = model.step(tokens[:, t], state)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, 1), logits, rtol=1e-9, atol=1e-9)
    for ours, theirs in ((state, final), (s, final)):
        for x, y in zip(_flat(ours), _flat(theirs)):
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)


def _flat(state):
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in _flat(s)]


def test_causality():
    model = tiny()
    tokens = torch.randint(0, 11, (1, 10))
    other = tokens.clone()
    other[:, 6:] = (other[:, 6:] + 1) % 11
    torch.testing.assert_close(model(tokens)[:, :6], model(other)[:, :6], rtol=0, atol=1e-12)


def test_greedy_generate_equals_argmax_of_full_reruns():
    model = tiny(seed=3)
    prompt = torch.randint(0, 11, (2, 5))
    out = model.generate(prompt, max_new_tokens=8, temperature=0.0)
    assert out.shape == (2, 13)
    assert torch.equal(out[:, :5], prompt)
    seq = prompt
    for _ in range(8):
        nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_sampling_is_seeded_and_respects_top_k():
    model = tiny(seed=4)
    prompt = torch.randint(0, 11, (4, 3))
    a = model.generate(prompt, 6, temperature=1.0, top_k=3, seed=7)
    b = model.generate(prompt, 6, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    # every sampled token is among the top 3 of the logits that produced it
    logits = model(a[:, :-1])[:, 2:]
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == a[:, 3:, None]).any(-1).all()


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([LanguageModel._sample(logits, 1.0, None, 0.75, g) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.75; 0.15 and 0.05 are cut
    draws = torch.stack([LanguageModel._sample(logits, 1.0, None, 0.4, g) for _ in range(50)])
    assert set(draws.flatten().tolist()) == {0}


def test_bad_arguments():
    model = tiny()
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.randn(2, 3))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.full((1, 3), 11))
    with pytest.raises(ValueError, match="top_p"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 2, top_p=1.5)
    with pytest.raises(ValueError, match="not causal"):
        LanguageModel(11, 8, 1, layer="mamba", layer_args=dict(bidirectional=True))
    with pytest.raises(ValueError, match="d_model"):
        LanguageModel(11, 8, 1, layer="mamba", layer_args=dict(d_model=8))


def test_layers_run_without_the_value_scan(monkeypatch):
    """Token ids are range-checked once per call; the layers' NaN scans (a device sync each on GPU)
    are off inside the model."""
    calls = []
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda t: calls.append(1) or real(t))
    model = tiny()
    logits, state = model(torch.randint(0, 11, (2, 5)), return_state=True)
    model.step(torch.randint(0, 11, (2,)), state)
    assert calls == []


def test_bad_states_and_tokens():
    model = tiny()
    tokens = torch.randint(0, 11, (2, 4))
    with pytest.raises(ValueError, match="one entry per layer"):
        model(tokens, state=model.init_state(2)[:1])
    with pytest.raises(ValueError, match="one entry per layer"):
        model.step(tokens[:, 0], None)
    s4d_state = tiny("s4d", dict(d_state=4)).init_state(2)
    with pytest.raises(ValueError, match=r"mamba: state must be a tuple of 2 .* like init_state\(2\)"):
        model.step(tokens[:, 0], s4d_state)  # the state of another model
    with pytest.raises(ValueError, match="batch size"):
        model(tokens, state=model.init_state(3))
    with pytest.raises(ValueError, match="batch and length"):
        model(tokens[:, :0])
    with pytest.raises(ValueError, match="lengths"):
        model(tokens, lengths=torch.tensor([5, 1]))
