"""SequenceModel: padding invariance, pooling, norms, argument errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssmzoo import SequenceModel
from ssmzoo.layers import base as layer_base
from ssmzoo.models import MaskedBatchNorm

VOCAB = 12


def _tiny(**overrides) -> SequenceModel:
    args = dict(d_output=5, vocab_size=VOCAB, d_model=8, n_layers=2, layer="s4d", layer_args={"d_state": 4})
    args.update(overrides)
    torch.manual_seed(0)
    return SequenceModel(**args).double()


def _padded_batch(seqs: list[torch.Tensor], total: int, garbage: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token sequences to ``total``; the padding holds random ids (garbage) or zeros."""
    x = (
        torch.randint(0, VOCAB, (len(seqs), total))
        if garbage
        else torch.zeros(len(seqs), total, dtype=torch.long)
    )
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    return x, torch.tensor([len(s) for s in seqs])


CONFIGS = [
    dict(layer_args={"d_state": 4, "bidirectional": False}, pooling="mean", norm="layer", prenorm=True),
    dict(layer_args={"d_state": 4, "bidirectional": True}, pooling="mean", norm="batch", prenorm=False),
    dict(
        layer_args={"d_state": 4, "bidirectional": True}, pooling="last", norm="rms", prenorm=True, ffn="glu"
    ),
    dict(
        layer_args={"d_state": 4, "bidirectional": False},
        pooling="last",
        norm="batch",
        prenorm=True,
        ffn="mlp",
    ),
]


@pytest.mark.parametrize(
    "cfg", CONFIGS, ids=lambda c: f"{c['pooling']}-{c['norm']}-bi{c['layer_args']['bidirectional']}"
)
def test_padding_never_changes_real_outputs_eval(cfg):
    model = _tiny(**cfg)
    # give batch norm non-trivial running statistics first
    model.train()
    with torch.no_grad():
        x, lengths = _padded_batch([torch.randint(0, VOCAB, (n,)) for n in (9, 4, 7)], 9, garbage=True)
        model(x, lengths)
    model.eval()
    torch.manual_seed(1)
    seqs = [torch.randint(0, VOCAB, (n,)) for n in (11, 3, 1, 8)]
    x, lengths = _padded_batch(seqs, 14, garbage=True)
    batched = model(x, lengths)
    alone = torch.cat([model(s[None]) for s in seqs])
    torch.testing.assert_close(batched, alone, rtol=1e-9, atol=1e-9)


def test_padding_invariance_pooling_none_real_valued_inputs():
    model = _tiny(
        vocab_size=None, d_input=3, pooling="none", layer_args={"d_state": 4, "bidirectional": True}
    )
    model.eval()
    lens = [6, 2, 5]
    seqs = [torch.randn(n, 3, dtype=torch.float64) for n in lens]
    x = torch.full((3, 8, 3), float("nan"), dtype=torch.float64)  # NaN in the padding must not leak
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    out = model(x, torch.tensor(lens))
    assert out.shape == (3, 8, 5)
    for i, s in enumerate(seqs):
        torch.testing.assert_close(out[i, : lens[i]], model(s[None])[0], rtol=1e-9, atol=1e-9)


def test_padding_amount_does_not_change_train_mode_batchnorm_outputs():
    model = _tiny(norm="batch", prenorm=False, layer_args={"d_state": 4, "bidirectional": True})
    model.train()
    torch.manual_seed(2)
    seqs = [torch.randint(0, VOCAB, (n,)) for n in (7, 3, 5)]
    outs = []
    for total, garbage in [(7, False), (10, True), (25, True)]:
        x, lengths = _padded_batch(seqs, total, garbage)
        outs.append(model(x, lengths))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(outs[2], outs[0], rtol=1e-9, atol=1e-9)


def test_masked_batchnorm_matches_batchnorm1d_on_real_positions():
    torch.manual_seed(3)
    bn, ref = MaskedBatchNorm(4).double(), nn.BatchNorm1d(4).double()
    lengths = torch.tensor([5, 2, 4])
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    mask = torch.arange(6)[None] < lengths[:, None]
    y = bn(x, mask)
    real = x[mask]  # (n_real, 4): the positions nn.BatchNorm1d should see
    torch.testing.assert_close(y[mask], ref(real))
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    bn.eval(), ref.eval()
    torch.testing.assert_close(bn(x, mask), ref(x.reshape(-1, 4)).reshape(3, 6, 4))


def test_mean_and_last_pooling_read_real_positions():
    # With no blocks and an identity decoder the pooled output is the pooled embedding itself.
    model = SequenceModel(d_output=3, vocab_size=VOCAB, d_model=3, n_layers=0, prenorm=False).double()
    with torch.no_grad():
        model.decoder.weight.copy_(torch.eye(3))
        model.decoder.bias.zero_()
    x, lengths = _padded_batch([torch.tensor([1, 2, 3]), torch.tensor([4])], 5, garbage=True)
    emb = model.encoder.weight
    torch.testing.assert_close(model(x, lengths), torch.stack([emb[[1, 2, 3]].mean(0), emb[4]]))
    model.pooling = "last"
    torch.testing.assert_close(model(x, lengths), torch.stack([emb[3], emb[4]]))


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(d_output=2), "vocab_size"),
        (dict(d_output=2, vocab_size=4, d_input=3), "d_input"),
        (dict(d_output=0, vocab_size=4), "d_output"),
        (dict(d_output=2, vocab_size=4, norm="group"), "norm"),
        (dict(d_output=2, vocab_size=4, pooling="max"), "pooling"),
        (dict(d_output=2, vocab_size=4, ffn="moe"), "ffn"),
        (dict(d_output=2, vocab_size=4, dropout=1.5), "dropout"),
        (dict(d_output=2, vocab_size=4, layer="nope"), "nope"),
        (dict(d_output=2, vocab_size=4, layer_args={"d_sate": 4}), "d_sate"),
        (dict(d_output=2, vocab_size=4, layer_args={"d_model": 4}), "d_model"),
        (dict(d_output=2, vocab_size=4, layer=[]), "layer"),
        (dict(d_output=2, vocab_size=4, layer=["s4d", 3]), "layer"),
        (dict(d_output=2, vocab_size=4, layer=["s4d", "swa"], layer_args=[{}]), "one dict per layer"),
        (dict(d_output=2, vocab_size=4, layer=["s4d", "swa"], layer_args=[{}, {"d_model": 4}]), "d_model"),
        (dict(d_output=2, vocab_size=4, layer_args=[{"d_state": 4}, {"d_state": 4}]), "one dict per layer"),
    ],
)
def test_bad_constructor_arguments_are_named(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SequenceModel(**kwargs)


def test_bad_inputs_are_named():
    model = _tiny()
    with pytest.raises(ValueError, match="token ids"):
        model(torch.full((1, 4), VOCAB))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.randn(1, 4))
    with pytest.raises(ValueError, match="lengths"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.tensor([5, 1]))
    real = _tiny(vocab_size=None, d_input=3)
    with pytest.raises(ValueError, match="d_input=3"):
        real(torch.randn(1, 4, 2, dtype=torch.float64))


def test_paired_inputs_decode_both_documents():
    """LRA Retrieval: both documents share the encoder; the decoder reads [h1, h2, h1·h2, h1 − h2]."""
    torch.manual_seed(0)
    model = SequenceModel(d_output=2, vocab_size=12, d_model=8, n_layers=1, layer="s4d",
                          layer_args={"d_state": 4, "bidirectional": True}, paired=True).eval()
    tokens = torch.randint(1, 12, (3, 2, 9))
    lengths = torch.tensor([[9, 4], [2, 9], [5, 5]])
    out = model(tokens, lengths)
    assert out.shape == (3, 2)
    for i in range(3):
        h1 = model.features(tokens[i, :1, : lengths[i, 0]])
        h2 = model.features(tokens[i, 1:, : lengths[i, 1]])
        expect = model.decoder(torch.cat([h1, h2, h1 * h2, h1 - h2], -1))
        torch.testing.assert_close(out[i : i + 1], expect, rtol=1e-5, atol=1e-5)
    swapped = model(tokens.flip(1), lengths.flip(1))
    assert not torch.allclose(swapped, out)  # h1 − h2 makes the order matter
    with pytest.raises(ValueError, match=r"\(batch, 2, length"):
        model(tokens[:, 0])
    with pytest.raises(ValueError, match=r"lengths must have shape \(batch, 2\)"):
        model(tokens, lengths[:, 0])
    with pytest.raises(ValueError, match="pooling"):
        SequenceModel(d_output=2, vocab_size=12, paired=True, pooling="none")


def _count_scans(monkeypatch) -> list[int]:
    calls = []
    real = layer_base._all_finite
    monkeypatch.setattr(layer_base, "_all_finite", lambda t: calls.append(1) or real(t))
    return calls


def test_input_values_are_checked_once_per_call(monkeypatch):
    """The model scans its real positions once; its layers run with the scan off (on GPU each scan
    would be a device sync)."""
    calls = _count_scans(monkeypatch)
    model = _tiny(vocab_size=None, d_input=3, n_layers=3, ffn="glu")
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    model(x)
    assert len(calls) == 1
    x[1, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(x)
    model(x, torch.tensor([6, 5]))  # NaN in the padding is fine
    calls.clear()
    _tiny()(torch.randint(0, VOCAB, (2, 6)))  # token ids: a range check, no scan
    assert calls == []


def test_input_dtype_and_device_must_match_the_model():
    real = _tiny(vocab_size=None, d_input=3)
    with pytest.raises(ValueError, match=r"\.to\("):
        real(torch.randn(1, 4, 3))  # float32 into a float64 model
    with pytest.raises(ValueError, match="meta"):
        real(torch.randn(1, 4, 3, dtype=torch.float64, device="meta"))
    with pytest.raises(ValueError, match="integer"):
        _tiny()(torch.zeros(2, 4, dtype=torch.long), torch.tensor([4.0, 2.0]))


def test_a_layer_pattern_repeats_with_its_own_arguments():
    from ssmzoo.layers import SWA, HSA, S4D

    model = SequenceModel(d_output=2, vocab_size=VOCAB, d_model=8, n_layers=5, layer=["s4d", "swa", "hsa"],
                          layer_args=[{"d_state": 4}, {"heads": 2, "window": 3}, {"heads": 2, "chunk_size": 4, "top_k": 2}],
                          ffn="glu")
    mixers = [b.sublayer for b in model.blocks][::2]  # every mixer is followed by its feed-forward block
    assert [type(m) for m in mixers] == [S4D, SWA, HSA, S4D, SWA]
    assert mixers[0].d_state == 4 and mixers[1].window == 3 and mixers[2].chunk_size == 4
    # the same arguments for every layer of the pattern when one dict is given
    same = SequenceModel(d_output=2, vocab_size=VOCAB, d_model=8, n_layers=2, layer=["s4d", "s4d"],
                         layer_args={"d_state": 6})
    assert [b.sublayer.d_state for b in same.blocks] == [6, 6]


def test_a_pattern_with_causal_layers_keeps_padding_out_of_real_outputs():
    torch.manual_seed(0)
    model = SequenceModel(d_output=3, vocab_size=VOCAB, d_model=8, n_layers=2, layer=["swa", "hsa"],
                          layer_args=[{"heads": 2, "window": 3}, {"heads": 2, "chunk_size": 4, "top_k": 2}]).double().eval()
    seqs = [torch.randint(0, VOCAB, (n,)) for n in (11, 3, 9)]
    x, lengths = _padded_batch(seqs, 13, garbage=True)
    torch.testing.assert_close(model(x, lengths), torch.cat([model(s[None]) for s in seqs]), rtol=1e-9, atol=1e-9)
