"""DataLoaders whose order depends only on (run seed, epoch), and which resume in the middle of an epoch.

How Lightning (2.3 and later; read in ``loops/fit_loop.py`` and ``loops/training_epoch_loop.py``) treats a
training DataLoader that has ``state_dict``/``load_state_dict``:

- every checkpoint stores ``loader.state_dict()`` (fit loop state, key ``"combined_loader"``);
- on resume it calls ``loader.load_state_dict(...)`` *before* ``iter(loader)`` (the DataLoader's, not the
  sampler's: a sampler's ``state_dict`` is never looked at), and calls ``sampler.set_epoch(epoch)``
  *after* ``iter(loader)`` but before the first ``next()``;
- except that it skips that call when ``configure_optimizers`` has read
  ``trainer.estimated_stepping_batches`` (Lightning issue #20550), which is why the ``ssmzoo`` command adds
  :class:`ssmzoo.cli.LoaderPosition`, which loads the position just before the first training step;
- it keeps the epoch's batch count (``len(loader)``) and counts the batches already done as fetched, so the
  loader must yield only the batches the epoch has left. With a sized loader it fetches no batch ahead, so
  the number of batches the loader has yielded is the number the loop has consumed.

So :class:`ResumableDataLoader` counts the batches it yields, and decides its order and the batches to skip
lazily, on the first ``next()``, once the epoch is known. Every loader here has its own ``torch.Generator``:
a DataLoader without one draws its workers' base seed from the global RNG on every ``iter()``, and a
resumed run would then draw a different number of times than an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


def run_seed() -> int:
    """The run's seed: what Lightning's ``seed_everything`` (the config's ``seed_everything``) set, else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for (seed, epoch); unlike ``seed + epoch`` it does not repeat across seeds."""
    digest = hashlib.blake2b(f"ssmzoo:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochSampler(DistributedSampler):
    """A DistributedSampler (one replica unless torch.distributed is initialised) whose order in each epoch is
    a permutation seeded by :func:`epoch_seed` (seed, epoch), plus ``start``: the next iteration skips the
    first ``start`` indices of this replica's order.

    Being a DistributedSampler, Lightning keeps it under DDP instead of replacing it with its own."""

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(
            dataset,
            num_replicas=dist.get_world_size() if distributed else 1,
            rank=dist.get_rank() if distributed else 0,
            shuffle=shuffle,
            seed=seed,
        )
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        # as DistributedSampler: every replica gets num_samples indices, repeating the first ones if needed
        if self.drop_last:
            order = order[: self.total_size]
        else:
            order = (order * math.ceil(self.total_size / max(n, 1)))[: self.total_size]
        order = order[self.rank : self.total_size : self.num_replicas]
        start, self.start = self.start, 0  # one iteration only
        return iter(order[start:])


class ResumableDataLoader(DataLoader):
    """A DataLoader over a map-style dataset whose order is a function of ``(seed, epoch)`` and whose
    position is saved in checkpoints (see the module docstring).

    Args:
        dataset: a map-style dataset.
        batch_size: samples per batch.
        shuffle: a new order every epoch (a permutation seeded by :func:`epoch_seed`) or the dataset's order.
        seed: the order's seed; default :func:`run_seed`.
        num_workers, collate_fn, pin_memory, drop_last: as in DataLoader.
        sampler: an order that replaces the epoch order: what Lightning injects (``--trainer.overfit_batches``
            gives a ``SequentialSampler``, so every epoch sees the same first batches). Such a loader does not
            resume in the middle of an epoch; it restarts that epoch.
        batch_sampler: only ``None`` (Lightning passes it when it injects ``sampler``).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        seed: int | None = None,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        sampler: Sampler | None = None,
        batch_sampler: None = None,
    ) -> None:
        if batch_sampler is not None:
            raise ValueError(f"ResumableDataLoader: batch_sampler must be None, got {type(batch_sampler).__name__}")
        if sampler is not None and shuffle:
            raise ValueError("ResumableDataLoader: shuffle must be False when a sampler is given (it sets the order)")
        seed = run_seed() if seed is None else seed
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=EpochSampler(dataset, shuffle, seed) if sampler is None else sampler,
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            drop_last=drop_last,
            persistent_workers=num_workers > 0,
            generator=torch.Generator(),
        )
        self.seed = seed
        self._yielded = 0
        self._resume_at: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        epoch = getattr(sampler, "epoch", 0)
        skip = 0
        if isinstance(sampler, EpochSampler):  # an injected sampler (overfit_batches) restarts its epoch instead
            if self._resume_at is not None and self._resume_at[0] == epoch:
                skip = self._resume_at[1]
            sampler.start = skip * self.batch_size
        self._resume_at = None
        self._yielded = skip
        self.generator.manual_seed(epoch_seed(self.seed, epoch))  # the workers' base seed, not the global RNG
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": getattr(self.sampler, "epoch", 0), "batches": self._yielded}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume_at = (int(state_dict["epoch"]), int(state_dict["batches"]))


def eval_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader in dataset order that never touches the global RNG (its own generator)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(0),
    )


def check_loader_args(owner: str, batch_size: object, num_workers: object) -> None:
    """ValueError naming ``owner`` and the argument unless both are ints in range."""
    for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{owner}: {name} must be an int >= {low}, got {value!r}")


__all__ = ["EpochSampler", "epoch_seed", "ResumableDataLoader", "check_loader_args", "eval_loader", "run_seed"]
