"""Passkey retrieval data and task: the example layout, seeding, the datamodule's arguments, and the task's
metrics on models whose answers are known (an oracle, and one that misses one digit)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import Tensor, nn

from ssmzoo.data.synthetic.passkey import FILLER, KEY, QUERY, PasskeyDataModule, passkey_example
from ssmzoo.tasks import RecallTask


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0, None])
def test_example_layout(depth):
    L_, n = 50, 4
    tokens, targets = passkey_example(L_, n, 7, torch.Generator().manual_seed(3), depth=depth)
    key = int((tokens == KEY).nonzero())
    digits = tokens[key + 1: key + 1 + n]
    assert ((digits >= 0) & (digits < 10)).all()
    assert tokens[L_ - n - 1] == QUERY and torch.equal(tokens[L_ - n:], digits)
    asked = targets != -100
    assert asked.nonzero().flatten().tolist() == list(range(L_ - n - 1, L_ - 1))
    assert torch.equal(targets[asked], digits) and torch.equal(targets[asked], tokens[L_ - n:])
    filler = torch.ones(L_, dtype=torch.bool)
    filler[key: key + 1 + n] = False
    filler[L_ - n - 1:] = False
    assert (tokens[filler] >= FILLER).all() and (tokens[filler] < FILLER + 7).all()
    if depth is not None:
        assert key == round(depth * (L_ - 2 * (n + 1)))


def test_datamodule_splits_lengths_and_seeds():
    dm = PasskeyDataModule(seq_len=30, test_seq_len=60, n_digits=3, filler_vocab=5, num_train=8, num_val=4,
                           num_test=4, batch_size=4)
    assert dm.vocab_size == 17
    train, test = dm.dataset("train"), dm.dataset("test")
    assert train[0]["input_ids"].shape == (30,) and test[0]["input_ids"].shape == (60,)
    assert torch.equal(train[2]["input_ids"], dm.dataset("train")[2]["input_ids"])  # per-index seeds
    assert not torch.equal(train[2]["input_ids"], train[3]["input_ids"])
    other = PasskeyDataModule(seq_len=30, n_digits=3, filler_vocab=5, seed=1)
    assert not torch.equal(other.dataset("train")[2]["input_ids"], train[2]["input_ids"])
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape == (4, 60) and batch["targets"].shape == (4, 60)


@pytest.mark.parametrize("kw,match", [(dict(seq_len=7, n_digits=4), "seq_len"), (dict(n_digits=0), "n_digits"),
                                      (dict(test_seq_len=0), "test_seq_len"), (dict(batch_size=0), "batch_size")])
def test_datamodule_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match) as info:
        PasskeyDataModule(**kw)
    assert "PasskeyDataModule" in str(info.value)


class _Answers(nn.Module):
    """Logits that put the next input token first (teacher forcing: exactly the passkey's digits), except
    at the last asked position when ``miss_last`` (so every passkey loses its last digit)."""

    def __init__(self, vocab: int, miss_last: bool) -> None:
        super().__init__()
        self.vocab, self.miss_last = vocab, miss_last
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: Tensor) -> Tensor:
        nxt = torch.cat([input_ids[:, 1:], input_ids[:, :1]], 1)
        if self.miss_last:
            nxt[:, -2] = (nxt[:, -2] + 1) % 10
        return 10.0 * nn.functional.one_hot(nxt, self.vocab).double() + 0 * self.dummy


@pytest.mark.parametrize("miss_last,exact,digit_acc", [(False, 1.0, 1.0), (True, 0.0, 0.75)])
def test_task_metrics(miss_last, exact, digit_acc):
    # RecallTask on passkeys: exact is the passkeys retrieved whole, acc the digits right
    dm = PasskeyDataModule(seq_len=40, n_digits=4, filler_vocab=5, num_test=10, batch_size=3)
    task = RecallTask(_Answers(dm.vocab_size, miss_last))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    (metrics,) = trainer.test(task, dataloaders=dm.test_dataloader(), verbose=False)
    assert metrics["test/exact"] == pytest.approx(exact) and metrics["test/acc"] == pytest.approx(digit_acc)
