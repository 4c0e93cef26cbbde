"""The synthetic tasks' definitions: each example asks exactly what the task says."""

from __future__ import annotations

import pytest
import torch

from ssmzoo.data.synthetic import (
    InductionHeadsDataModule,
    SelectiveCopyingDataModule,
    induction_heads,
    selective_copying,
)


def test_selective_copying_definition():
    g = torch.Generator().manual_seed(0)
    tokens, targets = selective_copying(200, seq_len=30, num_tokens=5, vocab_size=8, generator=g)
    assert tokens.shape == targets.shape == (200, 35)
    for x, y in zip(tokens, targets):
        body, markers = x[:30], x[30:]
        assert (markers == 1).all()
        assert not (body == 1).any()
        data = body[body != 0]  # the data tokens, in order of appearance
        assert len(data) == 5 and (data >= 2).all() and (data < 8).all()
        assert torch.equal(y[30:], data)
        assert (y[:30] == -100).all()
    # the data positions vary between examples and cover the whole body
    positions = (tokens[:, :30] != 0).nonzero()[:, 1]
    assert positions.min() == 0 and positions.max() == 29
    assert len({tuple((x[:30] != 0).nonzero().flatten().tolist()) for x in tokens}) > 150


def test_induction_heads_definition():
    g = torch.Generator().manual_seed(0)
    tokens, targets = induction_heads(300, seq_len=20, vocab_size=6, generator=g)
    assert tokens.shape == targets.shape == (300, 20)
    firsts = []
    for x, y in zip(tokens, targets):
        triggers = (x == 0).nonzero().flatten().tolist()
        assert len(triggers) == 2 and triggers[1] == 19 and triggers[0] <= 17
        firsts.append(triggers[0])
        assert y[-1] == x[triggers[0] + 1] and 1 <= y[-1] < 6
        assert (y[:-1] == -100).all()
    assert min(firsts) == 0 and max(firsts) == 17


def test_seeded_and_split_dependent():
    a = SelectiveCopyingDataModule(seq_len=20, num_tokens=4, vocab_size=6, num_train=8, num_val=8, num_test=8, seed=3)
    b = SelectiveCopyingDataModule(seq_len=20, num_tokens=4, vocab_size=6, num_train=8, num_val=8, num_test=8, seed=3)
    c = SelectiveCopyingDataModule(seq_len=20, num_tokens=4, vocab_size=6, num_train=8, num_val=8, num_test=8, seed=4)
    for dm in (a, b, c):
        dm.setup("fit")
    assert torch.equal(a.dataset("train").tensors[0], b.dataset("train").tensors[0])
    assert not torch.equal(a.dataset("train").tensors[0], c.dataset("train").tensors[0])
    assert not torch.equal(a.dataset("train").tensors[0], a.dataset("val").tensors[0])
    tokens, targets = next(iter(a.train_dataloader()))
    assert tokens.shape == targets.shape == (8, 24) and tokens.dtype == targets.dtype == torch.long
    assert a.vocab_size == 6 and a.ignore_index == -100


def test_induction_heads_test_length():
    dm = InductionHeadsDataModule(seq_len=16, test_seq_len=40, vocab_size=5, num_train=4, num_val=4, num_test=4)
    dm.setup("test")
    assert dm.dataset("train").tensors[0].shape == (4, 16)
    assert dm.dataset("test").tensors[0].shape == (4, 40)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_tokens"):
        SelectiveCopyingDataModule(seq_len=4, num_tokens=5)
    with pytest.raises(ValueError, match="vocab_size"):
        SelectiveCopyingDataModule(vocab_size=2)
    with pytest.raises(ValueError, match="seq_len"):
        InductionHeadsDataModule(seq_len=2)
    with pytest.raises(ValueError, match="batch_size"):
        InductionHeadsDataModule(batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        SelectiveCopyingDataModule(num_workers=-1)
    with pytest.raises(ValueError, match="seed must be an int"):
        InductionHeadsDataModule(seed=0.5)
    with pytest.raises(ValueError, match="split"):
        InductionHeadsDataModule().dataset("dev")
