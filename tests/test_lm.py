"""LanguageModel over every registered causal layer: streaming forward == step == forward, greedy generation ==
argmax of full re-runs; the generate API (max_length / max_new_tokens, sampling filters, eos, streamers); packed
documents never see each other."""

from __future__ import annotations

import pytest
import torch
from conformance_args import SMALL_ARGS

import ssmzoo
from ssmzoo import layers
from ssmzoo.layers import base as layer_base
from ssmzoo.models import LanguageModel
from ssmzoo.models.generation import sample_next


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead

VOCAB = 11


def causal_layers() -> list[str]:
    """Every registered layer that is causal when built with its conformance arguments (new layers join here)."""
    out = []
    for name in layers.available():
        layer = layers.build(name, **dict(SMALL_ARGS.get(name, {}), d_model=8))
        if layer.causal:
            out.append(name)
    return out


CAUSAL = causal_layers()


def tiny(layer="mamba", layer_args=None, seed=0, d_intermediate=0):
    torch.manual_seed(seed)
    args = SMALL_ARGS.get(layer, {}) if layer_args is None else layer_args
    return LanguageModel(VOCAB, d_model=8, n_layers=2, layer=layer, layer_args=args,
                         d_intermediate=d_intermediate).double().eval()


@pytest.fixture(autouse=True)
def _no_grad():
    """Nothing here trains: no autograd graphs (several times faster on these tiny models)."""
    with torch.no_grad():
        yield


def _flat(state):
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in _flat(s)]


def test_exported_and_every_lm_layer_covered():
    assert ssmzoo.LanguageModel is LanguageModel
    assert {"s4", "s4d", "companion", "mamba", "neural_memory"} <= set(CAUSAL)


def test_tied_head_and_shapes():
    model = tiny()
    assert model.lm_head.weight is model.embedding.weight
    assert model(torch.randint(0, VOCAB, (3, 7))).shape == (3, 7, VOCAB)
    padded = LanguageModel(VOCAB, 8, 1, layer_args=SMALL_ARGS["mamba"], pad_vocab_size_multiple=8)
    assert padded(torch.randint(0, VOCAB, (1, 3))).shape == (1, 3, 16) and padded.vocab_size == VOCAB


@pytest.mark.parametrize("layer", CAUSAL)
def test_step_and_continuation_match_forward(layer):
    """For every causal layer (with a gated MLP in the blocks): token-by-token step and a forward continued
    from a state give forward's logits and final state (float64)."""
    model = tiny(layer, d_intermediate=12)
    tokens = torch.randint(0, VOCAB, (2, 13))
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


@pytest.mark.parametrize("layer", CAUSAL)
def test_greedy_generate_equals_argmax_of_full_reruns(layer):
    model = tiny(layer, seed=3)
    prompt = torch.randint(0, VOCAB, (2, 5))
    out = model.generate(prompt, max_new_tokens=8)
    assert out.shape == (2, 13) and torch.equal(out[:, :5], prompt)
    seq = prompt
    for _ in range(8):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_causality():
    model = tiny()
    tokens = torch.randint(0, VOCAB, (1, 10))
    other = tokens.clone()
    other[:, 6:] = (other[:, 6:] + 1) % VOCAB
    torch.testing.assert_close(model(tokens)[:, :6], model(other)[:, :6], rtol=0, atol=1e-12)


# -- generate's arguments ---------------------------------------------------------------------------
def test_max_length_counts_the_prompt():
    model = tiny(seed=1)
    prompt = torch.randint(0, VOCAB, (2, 4))
    assert torch.equal(model.generate(prompt, max_length=10), model.generate(prompt, max_new_tokens=6))
    assert torch.equal(model.generate(prompt, max_new_tokens=0), prompt)


def test_sampling_is_seeded_and_filters_are_off_at_their_off_values():
    model = tiny(seed=4)
    prompt = torch.randint(0, VOCAB, (4, 3))
    a = model.generate(prompt, max_new_tokens=6, do_sample=True, top_k=3, seed=7)
    b = model.generate(prompt, max_new_tokens=6, do_sample=True, top_k=3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    logits = model(a[:, :-1])[:, 2:]  # every sampled token is among the top 3 of the logits that produced it
    assert (logits.topk(3, dim=-1).indices == a[:, 3:, None]).any(-1).all()
    plain = model.generate(prompt, max_new_tokens=6, do_sample=True, seed=5)
    for off in (dict(top_k=0), dict(top_p=0.0), dict(top_p=1.0), dict(top_k=VOCAB)):
        assert torch.equal(model.generate(prompt, max_new_tokens=6, do_sample=True, seed=5, **off), plain)
    # do_sample=False is greedy whatever the temperature
    assert torch.equal(model.generate(prompt, max_new_tokens=4, temperature=5.0), model.generate(prompt, max_new_tokens=4))


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, True, 1.0, 0, 0.75, g) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.75; 0.15 and 0.05 are cut
    draws = torch.stack([sample_next(logits, True, 1.0, 0, 0.4, g) for _ in range(50)])
    assert set(draws.flatten().tolist()) == {0}


def test_eos_stops_and_pads_finished_sequences():
    model = tiny(seed=2)
    prompt = torch.randint(0, VOCAB, (3, 4))
    free = model.generate(prompt, max_new_tokens=10)
    eos = int(free[0, 6])  # the third token generated for sequence 0
    out = model.generate(prompt, max_new_tokens=10, eos_token_id=[eos])
    for row, ref in zip(out, free):
        new, ref_new = row[4:].tolist(), ref[4:].tolist()
        if eos in ref_new:  # identical up to the first eos, then eos to the end
            k = ref_new.index(eos)
            assert new[: k + 1] == ref_new[: k + 1] and set(new[k:]) == {eos}
        else:
            assert new == ref_new[: len(new)]
    assert out.shape[1] <= free.shape[1]
    all_done = model.generate(prompt[:1], max_new_tokens=10, eos_token_id=eos)
    first = free[0, 4:].tolist().index(eos)  # at most 2
    assert torch.equal(all_done, free[:1, : 4 + first + 1])  # stopped once every sequence had ended


def test_streamers():
    model = tiny(seed=5)
    prompt = torch.randint(0, VOCAB, (2, 3))

    class Streamer:  # transformers' streamer protocol
        def __init__(self):
            self.put_calls, self.ended = [], False

        def put(self, value):
            self.put_calls.append(value.clone())

        def end(self):
            self.ended = True

    streamer = Streamer()
    out = model.generate(prompt, max_new_tokens=4, streamer=streamer)
    assert streamer.ended and torch.equal(streamer.put_calls[0], prompt)
    assert torch.equal(torch.stack(streamer.put_calls[1:], 1), out[:, 3:])
    seen = []
    model.generate(prompt, max_new_tokens=4, streamer=seen.append)
    assert torch.equal(torch.stack(seen, 1), out[:, 3:])


def test_generate_argument_errors():
    model = tiny()
    prompt = torch.zeros(1, 2, dtype=torch.long)
    cases = [
        (dict(), "exactly one"), (dict(max_length=5, max_new_tokens=2), "exactly one"),
        (dict(max_new_tokens=-1), "max_new_tokens"), (dict(max_length=0), "max_length"),
        (dict(max_new_tokens=2, top_p=1.5), "top_p"), (dict(max_new_tokens=2, top_k=-1), "top_k"),
        (dict(max_new_tokens=2, temperature=0.0, do_sample=True), "temperature"),
        (dict(max_new_tokens=2, do_sample=1), "do_sample"), (dict(max_new_tokens=2, eos_token_id=[]), "eos_token_id"),
        (dict(max_new_tokens=2, streamer=3), "streamer"), (dict(max_new_tokens=2, seed=1, generator=torch.Generator()), "seed"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            model.generate(prompt, **kwargs)
    with pytest.raises(ValueError, match="input_ids"):
        model.generate(torch.zeros(1, 2), max_new_tokens=1)


# -- packed documents -----------------------------------------------------------------------------------
def _windows():
    """Two windows of 13 tokens packing documents of 4, 1 and 8 tokens, and of 13 (as TextDataModule's seq_idx)."""
    seq_idx = torch.tensor([[0] * 4 + [1] + [2] * 8, [0] * 13])
    return torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(3)), seq_idx


@pytest.mark.parametrize("layer", CAUSAL)
def test_a_tokens_loss_never_depends_on_the_previous_document(layer):
    """What training sees: with the batch's seq_idx, the language-modelling task's per-token loss on a document
    is unchanged when the documents before it are replaced, and equals the document's loss run alone."""
    from ssmzoo.tasks import LanguageModelingTask

    task = LanguageModelingTask(tiny(layer, d_intermediate=16), lr=1e-3)
    tokens, seq_idx = _windows()
    batch = {"input_ids": tokens, "targets": tokens.roll(-1, 1), "num_bytes": torch.tensor([13, 13]),
             "seq_idx": seq_idx}
    _, _, nats, _ = task._loss(batch)
    replaced = tokens.clone()
    replaced[0, :5] = (replaced[0, :5] + 3) % VOCAB
    _, _, nats2, _ = task._loss({**batch, "input_ids": replaced})
    torch.testing.assert_close(nats2[0, 5:], nats[0, 5:], rtol=1e-9, atol=1e-9)
    alone = task.model(tokens[:1, 5:])
    torch.testing.assert_close(task(tokens, ssmzoo.Segments.from_seq_idx(seq_idx))[0, 5:], alone[0], rtol=1e-9, atol=1e-9)
    # Without segments the same windows leak: the model is not trivially blind to its past.
    _, _, leaky, _ = task._loss({k: v for k, v in {**batch, "input_ids": replaced}.items() if k != "seq_idx"})
    _, _, leaky0, _ = task._loss({k: v for k, v in batch.items() if k != "seq_idx"})
    assert (leaky[0, 5:] - leaky0[0, 5:]).abs().max() > 1e-9


def test_packed_states_are_per_document():
    """A hybrid stack returns every element's per-document final states: continuing a document from them equals
    running it whole."""
    model = LanguageModel(VOCAB, 8, pattern=[{"layer": "mamba2", "args": SMALL_ARGS["mamba2"]},
                                             {"layer": "swa", "args": SMALL_ARGS["swa"], "mlp": 16},
                                             {"layer": "mamba", "args": SMALL_ARGS["mamba"]}]).double()
    tokens, seq_idx = _windows()
    segments = ssmzoo.Segments.from_seq_idx(seq_idx)
    _, states = model(tokens, segments=segments, return_state=True)
    more = torch.randint(0, VOCAB, (segments.num_docs, 3), generator=torch.Generator().manual_seed(9))
    continued = model(more, state=states)
    for k, span in enumerate(segments.spans):
        whole = torch.cat([tokens[span.row:span.row + 1, span.start:span.stop], more[k:k + 1]], 1)
        torch.testing.assert_close(continued[k], model(whole)[0, -3:], rtol=1e-9, atol=1e-9)


def test_bad_arguments():
    model = tiny()
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.randn(2, 3))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.full((1, 3), VOCAB))
    with pytest.raises(ValueError, match="not causal"):
        LanguageModel(VOCAB, 8, 1, layer="mamba", layer_args=dict(bidirectional=True))
    with pytest.raises(ValueError, match="d_model"):
        LanguageModel(VOCAB, 8, 1, layer="mamba", layer_args=dict(d_model=8))
    for arg, value in (("d_intermediate", -1), ("pad_vocab_size_multiple", 0), ("n_layers", 0)):
        with pytest.raises(ValueError, match=arg):
            LanguageModel(**{"vocab_size": VOCAB, "d_model": 8, "n_layers": 1, arg: value})


def test_layers_run_without_the_value_scan(monkeypatch):
    """Token ids are range-checked once per call; the layers' NaN scans (a device sync each on GPU)
    are off inside the model, and in generation."""
    calls = []
    real = layer_base._all_finite
    monkeypatch.setattr(layer_base, "_all_finite", lambda t: calls.append(1) or real(t))
    model = tiny()
    logits, state = model(torch.randint(0, VOCAB, (2, 5)), return_state=True)
    model.step(torch.randint(0, VOCAB, (2,)), state)
    model.generate(torch.randint(0, VOCAB, (2, 5)), max_new_tokens=3)
    assert calls == []
    model.layers[0].mixer(torch.randn(1, 3, model.d_model, dtype=logits.dtype))  # a layer on its own does scan
    assert calls == [1]


def test_bad_states_and_tokens():
    model = tiny()
    tokens = torch.randint(0, VOCAB, (2, 4))
    with pytest.raises(ValueError, match="one entry per stack element"):
        model(tokens, state=model.init_state(2)[:1])
    with pytest.raises(ValueError, match="one entry per stack element"):
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
