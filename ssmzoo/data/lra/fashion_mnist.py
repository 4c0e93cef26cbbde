"""Sequential Fashion-MNIST: a real-data, offline STAND-IN for LRA Image (grayscale CIFAR-10).

It is *not* LRA Image. It is there so that the Image pipeline (1,024 pixels in raster order, 10
classes, real values or intensity tokens) can be trained and checked on real images without a
download: Debian ships Fashion-MNIST (``apt-get install dataset-fashion-mnist``, files under
``/usr/share/datasets/fashion-mnist``). Results on it must be reported as Fashion-MNIST results;
the datamodule's ``stand_in`` attribute says so for results tables.

Each 28×28 image is padded with 2 black pixels on every side to 32×32 and read row by row into a
sequence of 1,024 pixels, like LRA Image. The official 60,000 training images are split 55,000 /
5,000 (train / val) with a seed; test is the official 10,000.

Files (IDX, gzip or not): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ending in ``.gz``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .common import ClassificationDataModule, holdout
from .idx import read_idx

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SIDE, PAD = 28, 2  # 28 + 2 · 2 = 32, so a sequence is 32 · 32 = 1,024 pixels as in LRA Image
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_HOW = (f"Install it with `apt-get install dataset-fashion-mnist` (files in {DEBIAN_DIR}), or put the four "
        "IDX files from https://github.com/zalandoresearch/fashion-mnist in a folder and pass data_dir=<folder>.")


def find_file(folder: Path, name: str) -> Path:
    """``folder/name.gz`` or ``folder/name``; FileNotFoundError naming both if neither exists."""
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Fashion-MNIST: looked for {folder / name}.gz and {folder / name} and found neither. {_HOW}")


def read_fashion_mnist(folder: str | Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28) uint8, labels (n,) int64) of ``part`` ('train' or 'test')."""
    if part not in FILES:
        raise ValueError(f"part must be 'train' or 'test', got {part!r}")
    image_file, label_file = (find_file(Path(folder).expanduser(), name) for name in FILES[part])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
        raise ValueError(f"Fashion-MNIST: {image_file} holds {images.dtype} of shape {images.shape}; "
                         f"expected uint8 of shape (n, {SIDE}, {SIDE})")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"Fashion-MNIST: {label_file} holds shape {labels.shape}; expected ({len(images)},), "
                         f"one label per image of {image_file}")
    if labels.size and not (0 <= labels.min() and labels.max() < len(CLASSES)):
        raise ValueError(f"Fashion-MNIST: {label_file} has labels {labels.min()}..{labels.max()}; expected 0..9")
    return images, labels.astype(np.int64)


def to_sequences(images: np.ndarray) -> np.ndarray:
    """(n, 28, 28) -> (n, 1024): padded with black to 32×32, then read row by row."""
    padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD)))
    return padded.reshape(len(images), -1)


class PixelSequences(Sequence):
    """The sequences of one split, kept as uint8 and converted per item: real values in [-1, 1]
    of shape (1024, 1), or tokens 1..256 (intensity + 1; 0 is padding) of shape (1024,)."""

    def __init__(self, pixels: np.ndarray, tokens: bool) -> None:
        self.pixels, self.tokens = pixels, tokens

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row = self.pixels[i]
        if self.tokens:
            return row.astype(np.int64) + 1
        return (row.astype(np.float32) / 127.5 - 1.0)[:, None]


class FashionMNISTDataModule(ClassificationDataModule):
    """Sequential Fashion-MNIST, a stand-in for LRA Image: sequences of 1,024 pixels, 10 classes.

    Args: data_dir (folder of the four IDX files; default the Debian location
    ``/usr/share/datasets/fashion-mnist``), tokens (256 intensity tokens instead of real values in
    [-1, 1]), val_size (held out of the 60,000 training images; default 5,000), batch_size,
    num_workers, seed (of the validation split)."""

    num_classes = 10
    stand_in = "sequential Fashion-MNIST (stand-in for LRA Image / CIFAR-10)"

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
        if not isinstance(val_size, int) or val_size < 1:
            raise ValueError(f"val_size must be an integer >= 1, got {val_size!r}")
        self.data_dir, self.tokens, self.val_size = data_dir, tokens, val_size
        self.vocab_size = 257 if tokens else 0
        self.d_input = 0 if tokens else 1
        self._train: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def folder(self) -> Path:
        return Path(self.data_dir or DEBIAN_DIR).expanduser()

    def _load(self, split: str):
        if split == "test":
            images, labels = read_fashion_mnist(self.folder, "test")
            return PixelSequences(to_sequences(images), self.tokens), labels
        if self._train is None:  # train and val come from the same files: decode them once
            self._train = read_fashion_mnist(self.folder, "train")
        images, labels = self._train
        if self.val_size >= len(labels):
            raise ValueError(f"val_size must be smaller than the {len(labels)} training images, got {self.val_size}")
        keep, held = holdout(len(labels), self.val_size, self.seed, "val_size")
        idx = keep if split == "train" else held
        return PixelSequences(to_sequences(images[idx]), self.tokens), labels[idx]
