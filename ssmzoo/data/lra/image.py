"""LRA Image: grayscale CIFAR-10 as sequences of 1,024 pixels, 10 classes (45k / 5k / 10k).

Reads the official CIFAR-10 python release (``cifar-10-batches-py/data_batch_{1..5}``,
``test_batch``) at ``data_dir``; download it from https://www.cs.toronto.edu/~kriz/cifar.html.
Grayscale uses LRA's weights (0.2989 R + 0.5870 G + 0.1140 B). Pixels are fed as real values,
normalised as in the S4 LRA setup, or as 256 tokens (``tokens=True``; id = intensity + 1).

The batch files are pickles, and a pickle can name any Python callable to run while it loads. They are read
with :class:`CifarUnpickler`, which admits only what an array pickle needs (numpy's array, dtype and scalar
reconstruction, with no object dtypes); a file naming anything else is refused before it runs."""

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


def _plain_dtype(*args: object) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:  # an object array's items would be unpickled as arbitrary objects
        raise pickle.UnpicklingError(f"an array of dtype {dtype} (Python objects) is not allowed")
    return dtype


def _reconstruct(subtype: type, shape: object, dtype: object) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"an array of class {subtype!r} is not allowed")
    return _NUMPY_RECONSTRUCT(subtype, shape, dtype)


def _frombuffer(buffer: object, dtype: np.dtype, shape: object, order: str) -> np.ndarray:
    return _NUMPY_FROMBUFFER(buffer, _plain_dtype(dtype), shape, order)


def _scalar(dtype: np.dtype, *data: object) -> np.generic:
    return _NUMPY_SCALAR(_plain_dtype(dtype), *data)


def _latin1(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 writes bytes in pickle protocols 0-2 as _codecs.encode(text, "latin1")
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


# numpy's own reconstruction functions, found through its pickles (their modules moved between numpy 1 and 2)
_NUMPY_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_NUMPY_FROMBUFFER = np.zeros(0).__reduce_ex__(5)[0]
_NUMPY_SCALAR = np.uint8(0).__reduce__()[0]
# (module, name) -> what it stands for; the official files (numpy 1 under Python 2) name the first three
_ALLOWED: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1,
    ("builtins", "bytearray"): bytearray,
}


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that admits only the globals of ``_ALLOWED`` (array reconstruction); any other global, or a
    persistent id, raises ``pickle.UnpicklingError`` before anything is called."""

    def find_class(self, module: str, name: str) -> object:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"it names the global {module}.{name}, which a CIFAR-10 batch never does")
        return allowed


def default_data_dir() -> Path:
    """Where CIFAR-10 is looked for when data_dir is None: ``$SSMZOO_DATA/cifar10``."""
    return data_root() / "cifar10"


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 32, 32, 3) uint8, labels (n,)) from one official pickle file."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10: missing {path}. {_HOW}")
    try:
        with open(path, "rb") as f:
            d = CifarUnpickler(f, encoding="bytes").load()
        data, labels = d[b"data"], d[b"labels"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise ValueError(f"its data is {type(data).__name__} {getattr(data, 'dtype', '')}, not a uint8 array")
        labels = np.asarray(labels, dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"CIFAR-10: {path} is not an official CIFAR-10 python batch ({e}); nothing in it was run") from e
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
