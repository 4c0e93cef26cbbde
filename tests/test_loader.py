"""The training DataLoader: its order is a function of (seed, epoch), it never draws from the global RNG,
and from a saved position it yields exactly the batches an uninterrupted epoch had left."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from ssmzoo.data.loader import ResumableDataLoader, epoch_seed


def dataset(n: int = 23) -> TensorDataset:
    return TensorDataset(torch.arange(n))


def epoch_batches(loader: ResumableDataLoader, epoch: int) -> list[list[int]]:
    loader.sampler.set_epoch(epoch)
    return [batch[0].tolist() for batch in loader]


def test_order_depends_on_seed_and_epoch_only():
    a, b = ResumableDataLoader(dataset(), 4, shuffle=True, seed=3), ResumableDataLoader(dataset(), 4, shuffle=True, seed=3)
    assert epoch_batches(a, 0) == epoch_batches(b, 0) and epoch_batches(a, 1) == epoch_batches(b, 1)
    assert epoch_batches(a, 0) != epoch_batches(a, 1)
    assert sorted(sum(epoch_batches(a, 5), [])) == list(range(23))  # every sample once per epoch
    assert len(a) == 6 and [len(x) for x in epoch_batches(a, 0)] == [4, 4, 4, 4, 4, 3]
    # seed + epoch would make (3, 1) and (4, 0) the same order; the seeds differ
    assert epoch_seed(3, 1) != epoch_seed(4, 0)
    c = ResumableDataLoader(dataset(), 4, shuffle=True, seed=4)
    assert epoch_batches(a, 1) != epoch_batches(c, 0)
    assert sum(epoch_batches(ResumableDataLoader(dataset(), 4, shuffle=False), 2), []) == list(range(23))


def test_iterating_never_touches_the_global_rng():
    loader = ResumableDataLoader(dataset(), 4, shuffle=True, seed=0)
    before = torch.get_rng_state()
    epoch_batches(loader, 0)
    assert torch.equal(torch.get_rng_state(), before)


def test_run_seed_comes_from_seed_everything(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")
    assert ResumableDataLoader(dataset(), 4, shuffle=True).seed == 11


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("consumed", [0, 1, 4, 6])
def test_a_saved_position_yields_what_the_epoch_had_left(num_workers, consumed):
    reference = epoch_batches(ResumableDataLoader(dataset(), 4, shuffle=True, seed=1), 2)
    first = ResumableDataLoader(dataset(), 4, shuffle=True, seed=1, num_workers=num_workers)
    first.sampler.set_epoch(2)
    iterator = iter(first)
    seen = [next(iterator)[0].tolist() for _ in range(consumed)]
    state = first.state_dict()
    assert state == {"epoch": 2, "batches": consumed}
    resumed = ResumableDataLoader(dataset(), 4, shuffle=True, seed=1, num_workers=num_workers)
    resumed.load_state_dict(state)
    assert len(resumed) == len(reference)  # the loop still counts the whole epoch
    rest = epoch_batches(resumed, 2)
    assert seen + rest == reference
    # the position applies to its own epoch only; the next one is whole
    assert epoch_batches(resumed, 3) == epoch_batches(ResumableDataLoader(dataset(), 4, shuffle=True, seed=1), 3)


def test_a_position_from_another_epoch_is_ignored():
    loader = ResumableDataLoader(dataset(), 4, shuffle=True, seed=1)
    loader.load_state_dict({"epoch": 0, "batches": 3})
    assert len(epoch_batches(loader, 1)) == 6


def test_lightning_overfit_batches_repeats_the_first_batches_in_order(tmp_path):
    """``--trainer.overfit_batches N``: Lightning injects a SequentialSampler into the training loader (it used to
    refuse: the loader's ``__init__`` had no ``sampler``); every epoch then trains on the dataset's first N batches."""
    import lightning.pytorch as pl

    seen: list[list[int]] = []

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, batch_idx):
            seen.append(batch[0].tolist())
            return (self.w - 1.0) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            return ResumableDataLoader(TensorDataset(torch.arange(40)), batch_size=4, shuffle=True, seed=3)

    trainer = pl.Trainer(overfit_batches=2, max_epochs=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Recorder(), datamodule=Data())
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7]] * 3


def test_a_given_sampler_excludes_shuffle_and_batch_sampler():
    data = TensorDataset(torch.arange(8))
    with pytest.raises(ValueError, match="shuffle"):
        ResumableDataLoader(data, 2, shuffle=True, sampler=torch.utils.data.SequentialSampler(data))
    with pytest.raises(ValueError, match="batch_sampler"):
        ResumableDataLoader(data, 2, shuffle=False, batch_sampler=[[0, 1]])
