"""What the LRA classification datamodules share: padding collate, splits, loaders, the majority baseline.

Every batch is ``(inputs, lengths, labels)``:
- token tasks: inputs LongTensor (B, L) right-padded with PAD = 0;
- pixel tasks: inputs FloatTensor (B, L, 1) (all lengths equal);
- paired tasks (Retrieval): inputs (B, 2, L) and lengths (B, 2), one row per document.
"""

from __future__ import annotations

import abc
import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..paths import data_root

PAD = 0
SPLITS = ("train", "val", "test")


def pad_collate(batch: Sequence[tuple[np.ndarray | tuple[np.ndarray, ...], int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Stack ``(sequence, label)`` samples, right-padding to the longest; a sequence may be a tuple
    of arrays (paired inputs), giving inputs (B, P, L) and lengths (B, P)."""
    labels = torch.tensor([label for _, label in batch], dtype=torch.long)
    paired = isinstance(batch[0][0], tuple)
    rows = [seq if paired else (seq,) for seq, _ in batch]
    lengths = torch.tensor([[len(s) for s in r] for r in rows], dtype=torch.long)
    first = np.asarray(rows[0][0])
    dtype = torch.float32 if np.issubdtype(first.dtype, np.floating) else torch.long
    inputs = torch.full((len(rows), len(rows[0]), int(lengths.max()), *first.shape[1:]), PAD, dtype=dtype)
    for i, r in enumerate(rows):
        for j, s in enumerate(r):
            inputs[i, j, : len(s)] = torch.from_numpy(np.asarray(s)).to(dtype)
    if not paired:
        return inputs[:, 0], lengths[:, 0], labels
    return inputs, lengths, labels


class _ListDataset(Dataset):
    def __init__(self, sequences: Sequence, labels: np.ndarray) -> None:
        self.sequences, self.labels = sequences, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.sequences[i], int(self.labels[i])


class ClassificationDataModule(LightningDataModule, metaclass=abc.ABCMeta):
    """Base for datamodules whose splits fit in memory. Subclasses set ``num_classes``,
    ``vocab_size`` (0 for real-valued inputs) and ``d_input``, and implement ``_load(split)``
    returning ``(sequences, labels)``."""

    num_classes: int = 2
    vocab_size: int = 0
    d_input: int = 0

    def __init__(self, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self._splits: dict[str, tuple[Sequence, np.ndarray]] = {}

    @abc.abstractmethod
    def _load(self, split: str) -> tuple[Sequence, np.ndarray]:
        """(sequences, labels) of ``split``."""

    def load_split(self, split: str) -> tuple[Sequence, np.ndarray]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self._splits:
            self._splits[split] = self._load(split)
        return self._splits[split]

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in needed.get(stage, SPLITS) if stage is not None else SPLITS:
            self.load_split(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            _ListDataset(*self.load_split(split)),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=pad_collate,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def majority_class_accuracy(self, split: str = "test") -> float:
        """Accuracy on ``split`` of always predicting the training split's most frequent label."""
        train_labels = np.asarray(self.load_split("train")[1])
        majority = int(np.argmax(np.bincount(train_labels, minlength=self.num_classes)))
        return float(np.mean(np.asarray(self.load_split(split)[1]) == majority))


def holdout(n: int, fraction_or_size: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of range(n) into (kept, held out) index arrays."""
    size = int(round(n * fraction_or_size)) if isinstance(fraction_or_size, float) else int(fraction_or_size)
    if not 0 <= size < n:
        raise ValueError(f"cannot hold out {fraction_or_size} of {n} samples")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[size:]), np.sort(perm[:size])


def require_dir(path: str | Path, what: str, how: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{what}: looked for the folder {p} and found nothing. {how}")
    return p


def cache_file(kind: str, *keys: object) -> Path:
    """A path under $SSMZOO_DATA/cache for decoded arrays, keyed by the given values."""
    digest = hashlib.sha256(repr(keys).encode()).hexdigest()[:16]
    path = data_root() / "cache" / kind / f"{digest}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
