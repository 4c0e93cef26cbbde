"""RAMba: the layout (lower mixers, one chunk memory, HSA blocks each followed by local mixers), causality,
streaming (chunked continuation and step equal one forward), generation through step equal to greedy
re-running of forward, gradients, and clear errors. Both designs: Mamba (RAMba) and SWA + MLP
(HSA-UltraLong); "mamba" stands in for "mamba2" until that layer is registered."""

from __future__ import annotations

import pytest
import torch

from ssmzoo.layers import available
from ssmzoo.layers.hsa import HSARead, HSAState, SharedChunkMemory
from ssmzoo.models import LanguageModel, RAMba
from ssmzoo.models.lm import Block
from ssmzoo.models.ramba import DEFAULT_MIXER

VOCAB = 11
DESIGNS = {
    "mamba": dict(lower_layer="mamba", local_layer="mamba", lower_layer_args={"d_state": 4},
                  local_layer_args={"d_state": 4}),
    "swa": dict(lower_layer="swa", local_layer="swa", lower_layer_args={"heads": 2, "window": 5},
                local_layer_args={"heads": 2, "window": 5}, d_intermediate=24),
}


def _model(design: str = "mamba", **kw) -> RAMba:
    torch.manual_seed(0)
    args = dict(d_model=16, n_lower_layers=1, n_hsa_layers=2, local_per_hsa=1, heads=2, kv_heads=1, chunk_size=4,
                top_k=2, **DESIGNS[design])
    return RAMba(VOCAB, **{**args, **kw}).double().eval()


def _tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _kind(element) -> str:
    if isinstance(element, SharedChunkMemory):
        return "memory"
    assert isinstance(element, Block)
    return "hsa" if isinstance(element.mixer, HSARead) else element.mixer.registry_name


def test_layout():
    """RAMba is a LanguageModel whose pattern is lower blocks, one chunk memory, then HSA reads and local blocks."""
    model = _model(n_lower_layers=2, n_hsa_layers=2, local_per_hsa=3)
    assert isinstance(model, LanguageModel)
    assert [_kind(e) for e in model.layers] == ["mamba", "mamba", "memory"] + ["hsa", "mamba", "mamba", "mamba"] * 2
    assert DEFAULT_MIXER == ("mamba2" if "mamba2" in available() else "mamba")


@pytest.mark.parametrize("design", DESIGNS)
def test_causal(design):
    model = _model(design)
    x = _tokens(2, 23)
    y = model(x)
    x2 = x.clone()
    x2[:, 13:] = (x2[:, 13:] + 1) % VOCAB
    torch.testing.assert_close(model(x2)[:, :13], y[:, :13], rtol=0, atol=1e-12)


@pytest.mark.parametrize("design", DESIGNS)
def test_streaming_equals_one_forward(design):
    model = _model(design)
    x = _tokens(2, 22)
    y, final = model(x, return_state=True)
    y1, s1 = model(x[:, :9], return_state=True)
    y2, s2 = model(x[:, 9:], state=s1, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-9, atol=1e-9)
    state, outs = model.init_state(2), []
    for t in range(x.shape[1]):
        logits, state = model.step(x[:, t], state)
        outs.append(logits)
    torch.testing.assert_close(torch.stack(outs, 1), y, rtol=1e-9, atol=1e-9)
    memory = 1  # the pattern's element index of the chunk memory (after one lower layer)
    for a, b, c in zip(state[memory], s2[memory], final[memory]):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(b, c, rtol=1e-9, atol=1e-9)
    assert final[memory].landmarks.shape[1] == 22 // 4


@pytest.mark.parametrize("design", DESIGNS)
def test_generate_through_step_is_greedy_rerunning_of_forward(design):
    model = _model(design)
    prompt = _tokens(2, 6)
    out = model.generate(prompt, max_new_tokens=8)  # crosses two chunk boundaries (S = 4)
    seq = prompt
    for _ in range(8):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_the_memory_is_of_the_lower_output_and_shared():
    """Changing an upper local layer's weights leaves the memory alone; every HSA block reads that memory."""
    model = _model()
    x = _tokens(1, 17)
    _, state = model(x, return_state=True)
    assert [_kind(e) for e in model.layers] == ["mamba", "memory", "hsa", "mamba", "hsa", "mamba"]
    with torch.no_grad():
        for p in model.layers[3].parameters():  # a local layer above the memory
            p.add_(0.1)
    logits2, state2 = model(x, return_state=True)
    for a, b in zip(state[1], state2[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert isinstance(state[1], HSAState) and state[2] is None and state[4] is None
    # Both HSA reads see the memory: scaling its values changes what each read block adds to its own input.
    seen = {}
    for i in (2, 4):
        model.layers[i].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out[0] - a[0]))
    model(x)
    before = dict(seen)
    with torch.no_grad():
        model.layers[1].memory.proj_v.weight.mul_(2.0)
    model(x)
    for i in (2, 4):
        assert (seen[i] - before[i]).abs().max() > 1e-6


@pytest.mark.parametrize("design", DESIGNS)
def test_gradients_reach_every_parameter(design):
    model = _model(design).train()
    logits = model(_tokens(2, 19))
    (logits * torch.randn_like(logits)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_bad_arguments_and_inputs():
    for kw, match in [(dict(lower_layer="no-such-layer"), "lower_layer"), (dict(n_hsa_layers=0), "n_hsa_layers"),
                      (dict(local_layer_args={"d_model": 4}), "d_model"), (dict(chunk_size=0), "chunk_size"),
                      (dict(local_layer="mamba", local_layer_args={"bidirectional": True}), "not causal"),
                      (dict(hsa_backend="nope"), "hsa_backend")]:
        with pytest.raises(ValueError, match=match) as info:
            _model(**kw)
        assert "RAMba" in str(info.value)
    model = _model()
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.full((1, 3), VOCAB))
    with pytest.raises(ValueError, match="one entry per stack element"):
        model.step(_tokens(1, 1)[:, 0], [])
    state = model.init_state(2)
    state[1] = state[1]._replace(keys=state[1].keys[:1])
    with pytest.raises(ValueError, match="state.keys"):
        model.step(_tokens(2, 1)[:, 0], state)
