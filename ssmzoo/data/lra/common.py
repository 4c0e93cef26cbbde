"""What the LRA classification datamodules share: padding collate, splits, loaders, the majority baseline.

Every batch is ``(inputs, lengths, labels)``:
- token tasks: inputs LongTensor (B, L) right-padded with PAD = 0;
- pixel tasks: inputs FloatTensor (B, L, 1) (all lengths equal);
- paired tasks (Retrieval): inputs (B, 2, L) and lengths (B, 2), one row per document.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..loader import ResumableDataLoader, check_loader_args, eval_loader
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
    """Base for classification datamodules whose splits fit in memory.

    One lifecycle for all: ``__init__`` checks the arguments (a ValueError naming the argument),
    ``prepare_data`` writes files when the data is generated (once, on one process), ``setup`` /
    ``load_split`` read them. Training batches come in an order set by the run seed and the epoch, and a
    run resumed from a mid-epoch checkpoint continues with the batches the epoch had left
    (:class:`ssmzoo.data.loader.ResumableDataLoader`).

    Subclasses set ``num_classes``, ``vocab_size`` (0 for real-valued inputs) and ``d_input`` (0 for
    tokens), which the ``ssmzoo`` command links into the model, and implement ``_load(split)`` returning
    ``(sequences, labels)``; ``_source(split)`` says where a split comes from, for error messages.

    Args:
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        seed: the seed of the data itself (generation, held-out splits); the training order follows the
            run seed (``seed_everything``) instead.
        pin_memory: DataLoader pin_memory.
        shuffle: a new training order every epoch.
    """

    num_classes: int = 2
    vocab_size: int = 0
    d_input: int = 0
    # The command-line flag that points the datamodule at its files, named in error messages.
    data_flag: str = "--data.init_args.data_dir"

    def __init__(
        self, batch_size: int, num_workers: int, seed: int, pin_memory: bool = False, shuffle: bool = True
    ) -> None:
        super().__init__()
        check_loader_args(type(self).__name__, batch_size, num_workers)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"{type(self).__name__}: seed must be an int, got {seed!r}")
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.pin_memory, self.shuffle = pin_memory, shuffle
        self._splits: dict[str, tuple[Sequence, np.ndarray]] = {}

    @abc.abstractmethod
    def _load(self, split: str) -> tuple[Sequence, np.ndarray]:
        """(sequences, labels) of ``split``."""

    def _source(self, split: str) -> str:
        """Where ``split`` is read from (a file or folder), for error messages."""
        return ""

    def load_split(self, split: str) -> tuple[Sequence, np.ndarray]:
        """``(sequences, labels)`` of ``"train"``, ``"val"`` or ``"test"`` (read once, then kept)."""
        if split not in SPLITS:
            raise ValueError(f"{type(self).__name__}: split must be one of {SPLITS}, got {split!r}")
        if split not in self._splits:
            sequences, labels = self._load(split)
            if len(labels) == 0:
                source = self._source(split)
                raise ValueError(
                    f"{type(self).__name__}: the {split} split is empty"
                    + (f" ({source} holds no samples)" if source else "")
                    + f"; point {self.data_flag} at a data set whose {split} split has samples"
                )
            self._splits[split] = (sequences, labels)
        return self._splits[split]

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in needed.get(stage, SPLITS) if stage is not None else SPLITS:
            self.load_split(split)

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(
            _ListDataset(*self.load_split("train")),
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            num_workers=self.num_workers,
            collate_fn=pad_collate,
            pin_memory=self.pin_memory,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        return eval_loader(
            _ListDataset(*self.load_split(split)),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=pad_collate,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def majority_class_accuracy(self, split: str = "test") -> float:
        """Accuracy on ``split`` of always predicting the training split's most frequent label."""
        train_labels = np.asarray(self.load_split("train")[1])
        majority = int(np.argmax(np.bincount(train_labels, minlength=self.num_classes)))
        return float(np.mean(np.asarray(self.load_split(split)[1]) == majority))


def holdout(n: int, fraction_or_size: float | int, seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of range(n) into (kept, held out) index arrays; ``name`` is the argument that set
    ``fraction_or_size``, named in the error when it cannot be held out."""
    size = int(round(n * fraction_or_size)) if isinstance(fraction_or_size, float) else int(fraction_or_size)
    if not 0 <= size < n:
        raise ValueError(
            f"{name}={fraction_or_size!r} would hold out {size} of {n} samples; "
            f"it must leave at least one sample and hold out none or more"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[size:]), np.sort(perm[:size])


def require_dir(path: str | Path, what: str, how: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{what}: looked for the folder {p} and found nothing. {how}")
    return p


def files_key(files: Iterable[Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime in ns) of every file: a cache built from these files is valid while this is equal."""
    key = []
    for f in files:
        stat = f.stat()
        key.append((str(f.resolve()), stat.st_size, stat.st_mtime_ns))
    return key


def cache_file(kind: str, key: object) -> Path:
    """A path under ``$SSMZOO_DATA/cache/<kind>`` for decoded arrays, named by a hash of ``key`` (what they
    were built from: the files' names, sizes and mtimes, the decoder's version and its arguments)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = data_root() / "cache" / kind / f"{digest}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
