"""LRA Image: grayscale CIFAR-10 as sequences of 1,024 pixels, 10 classes (45k / 5k / 10k).

Reads the official CIFAR-10 python release (``cifar-10-batches-py/data_batch_{1..5}``,
``test_batch``) at ``data_dir``; download it from https://www.cs.toronto.edu/~kriz/cifar.html.
Grayscale uses LRA's weights (0.2989 R + 0.5870 G + 0.1140 B). Pixels are fed as real values,
normalised as in the S4 LRA setup, or as 256 tokens (``tokens=True``; id = intensity + 1)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..paths import data_root
from .common import ClassificationDataModule, holdout, require_dir

_HOW = ("Download the CIFAR-10 python version (cifar-10-python.tar.gz) and extract it, "
        "then pass --data.init_args.data_dir <folder containing cifar-10-batches-py> "
        "(or extract it to $SSMZOO_DATA/cifar10).")
MEAN, STD = 122.6 / 255.0, 61.0 / 255.0


def default_data_dir() -> Path:
    """Where CIFAR-10 is looked for when data_dir is None: ``$SSMZOO_DATA/cifar10``."""
    return data_root() / "cifar10"


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 32, 32, 3) uint8, labels (n,)) from one official pickle file."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10: missing {path}. {_HOW}")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, EOFError) as e:
        raise ValueError(f"CIFAR-10: {path} is not an official CIFAR-10 python batch ({e})") from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"CIFAR-10: {path} has data of shape {data.shape}; expected (n, 3072) with n labels")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def to_grayscale(images: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) uint8 -> (n, 1024) uint8, row-major pixel order."""
    gray = images.astype(np.float32) @ np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)
    return np.clip(np.round(gray), 0, 255).astype(np.uint8).reshape(len(images), -1)


class LRAImageDataModule(ClassificationDataModule):
    """Args: data_dir (folder holding ``cifar-10-batches-py``; default ``$SSMZOO_DATA/cifar10``), tokens (feed 256 intensity tokens
    instead of real values), val_size (held out of the 50k training images; LRA uses 5,000),
    batch_size, num_workers, seed (of the validation split)."""

    num_classes = 10

    def __init__(
        self,
        data_dir: str | None = None,
        tokens: bool = False,
        val_size: int = 5000,
        batch_size: int = 50,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if not isinstance(val_size, int) or isinstance(val_size, bool) or not 0 <= val_size < 50_000:
            raise ValueError(f"LRAImageDataModule: val_size must be an int in [0, 50000), got {val_size!r}")
        self.data_dir, self.tokens, self.val_size = data_dir, tokens, val_size
        self.vocab_size = 257 if tokens else 0
        self.d_input = 0 if tokens else 1

    def _folder(self) -> Path:
        root = require_dir(self.data_dir or default_data_dir(), "LRA Image (CIFAR-10) data_dir", _HOW)
        return root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root

    def _encode(self, gray: np.ndarray) -> list[np.ndarray]:
        if self.tokens:
            return list(gray.astype(np.int64) + 1)
        return list(((gray.astype(np.float32) / 255.0 - MEAN) / STD)[..., None])

    def _source(self, split: str) -> str:
        return str(Path(self.data_dir or default_data_dir()) / ("test_batch" if split == "test" else "data_batch_*"))

    def _load(self, split: str):
        folder = self._folder()
        if split == "test":
            images, labels = read_cifar_batch(folder / "test_batch")
            return self._encode(to_grayscale(images)), labels
        parts = [read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        keep, held = holdout(len(labels), self.val_size, self.seed, "val_size")
        idx = keep if split == "train" else held
        return self._encode(to_grayscale(images[idx])), labels[idx]
