"""The IDX reader and the sequential Fashion-MNIST datamodule (the offline stand-in for LRA Image), on
tiny IDX files written here, and on the Debian files when they are installed."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ssmzoo.data.lra.fashion_mnist import DEBIAN_DIR, FashionMNISTDataModule, read_fashion_mnist
from ssmzoo.data.lra.idx import read_idx

TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
              np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """Our own IDX writer: magic 00 00 <type> <ndim>, big-endian uint32 dimensions, big-endian values."""
    header = bytes([0, 0, TYPE_CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    data = idx_bytes(array)
    path = path.with_name(path.name + ".gz") if compress else path
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def write_fashion(folder: Path, n_train=12, n_test=5, seed=0, compress=True):
    """Tiny Fashion-MNIST files; image i has pixel (0, 0) = i and pixel (27, 27) = 255 - label."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images[:, 0, 0] = np.arange(n)
        images[:, 27, 27] = 255 - labels
        write_idx(folder / f"{part}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{part}-labels-idx1-ubyte", labels, compress)
        out[part] = (images, labels)
    return out


# ----------------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("dtype", list(TYPE_CODES))
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, dtype, compress):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    got = read_idx(write_idx(tmp_path / "a-idx3", array, compress))
    assert got.dtype == dtype and got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got, array)


def test_idx_big_endian_by_hand(tmp_path):
    raw = bytes([0, 0, 0x0B, 1]) + struct.pack(">I", 2) + bytes([0x01, 0x02, 0xFF, 0xFE])
    (tmp_path / "x").write_bytes(raw)
    assert read_idx(tmp_path / "x").tolist() == [258, -2]


@pytest.mark.parametrize(
    "raw,message",
    [
        (b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic number 12 34 08 01"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "magic number"),
        (b"\x00\x00\x08", "truncated"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated inside its header"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x00\x01", "truncated: 10 bytes, expected 13"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 1) + b"\x00\x01", "longer than its header says"),
    ],
)
def test_idx_errors_name_the_file(tmp_path, raw, message):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=message) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_idx_truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.zeros((100, 28, 28), np.uint8)))
    path = tmp_path / "cut-idx3-ubyte.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="gzip") as e:
        read_idx(path)
    assert str(path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing"):
        read_idx(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------------
# Datamodule


@pytest.mark.parametrize("compress", [True, False])
def test_reader(tmp_path, compress):
    truth = write_fashion(tmp_path, compress=compress)
    images, labels = read_fashion_mnist(tmp_path, "train")
    np.testing.assert_array_equal(images, truth["train"][0])
    np.testing.assert_array_equal(labels, truth["train"][1])
    assert labels.dtype == np.int64


def test_splits_padding_scaling_and_labels(tmp_path):
    truth = write_fashion(tmp_path, n_train=12, n_test=5)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=3, batch_size=4)
    assert (dm.num_classes, dm.d_input, dm.vocab_size) == (10, 1, 0)
    assert "stand-in" in dm.stand_in and "Fashion-MNIST" in dm.stand_in
    seen = {"train": [], "val": [], "test": []}
    for split in seen:
        seqs, labels = dm.load_split(split)
        part = "t10k" if split == "test" else "train"
        images, true_labels = truth[part]
        for seq, label in zip(seqs, labels):
            assert seq.shape == (1024, 1) and seq.dtype == np.float32
            grid = seq[:, 0].reshape(32, 32)
            # 2 black pixels of padding on every side, scaled to -1
            assert (grid[:2] == -1).all() and (grid[-2:] == -1).all()
            assert (grid[:, :2] == -1).all() and (grid[:, -2:] == -1).all()
            i = int(round((grid[2, 2] + 1) * 127.5))  # pixel (0, 0) of the image is its index
            np.testing.assert_allclose(grid[2:30, 2:30], images[i] / 127.5 - 1, atol=1e-6)
            assert label == true_labels[i]
            seen[split].append(i)
    assert [len(v) for v in seen.values()] == [9, 3, 5]
    assert sorted(seen["train"] + seen["val"]) == list(range(12))
    assert seen["test"] == list(range(5))  # the official test set, in order


def test_tokens(tmp_path):
    truth = write_fashion(tmp_path)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), tokens=True, val_size=2)
    assert (dm.d_input, dm.vocab_size) == (0, 257)
    seqs, labels = dm.load_split("test")
    assert seqs[0].shape == (1024,) and seqs[0].dtype == np.int64
    grid = seqs[1].reshape(32, 32)
    assert (grid[:2] == 1).all()  # black padding is token 1; 0 stays the padding id of batches
    np.testing.assert_array_equal(grid[2:30, 2:30], truth["t10k"][0][1].astype(np.int64) + 1)
    x, lengths, y = next(iter(dm.test_dataloader()))
    assert x.dtype == torch.long and x.shape == (5, 1024) and (lengths == 1024).all()


def test_split_is_seeded(tmp_path):
    write_fashion(tmp_path, n_train=30)

    def val_ids(seed):
        seqs, _ = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=5, seed=seed).load_split("val")
        return [int(round((seq[2 * 32 + 2, 0] + 1) * 127.5)) for seq in seqs]  # image pixel (0, 0) = index

    assert val_ids(0) == val_ids(0)
    assert val_ids(0) != val_ids(1)


def test_loader_batches(tmp_path):
    write_fashion(tmp_path)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=2, batch_size=4)
    dm.setup("fit")
    x, lengths, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1024, 1) and x.dtype == torch.float32 and y.dtype == torch.long
    assert -1 <= x.min() and x.max() <= 1


def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        FashionMNISTDataModule(data_dir=str(tmp_path / "nowhere")).load_split("test")
    message = str(e.value)
    assert str(tmp_path / "nowhere" / "t10k-images-idx3-ubyte") in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_mismatched_files(tmp_path):
    write_fashion(tmp_path, n_train=6)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8), compress=True)  # one label short
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz holds shape"):
        read_fashion_mnist(tmp_path, "train")
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(6, 10, np.uint8), compress=True)
    with pytest.raises(ValueError, match="expected 0..9"):
        read_fashion_mnist(tmp_path, "train")
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((6, 32, 32), np.uint8), compress=True)
    with pytest.raises(ValueError, match=r"expected uint8 of shape \(n, 28, 28\)"):
        read_fashion_mnist(tmp_path, "train")


def test_bad_arguments(tmp_path):
    write_fashion(tmp_path, n_train=6)
    with pytest.raises(ValueError, match="val_size"):
        FashionMNISTDataModule(data_dir=str(tmp_path), val_size=0)
    with pytest.raises(ValueError, match="val_size must be smaller than the 6"):
        FashionMNISTDataModule(data_dir=str(tmp_path), val_size=6).load_split("train")
    with pytest.raises(ValueError, match="part"):
        read_fashion_mnist(tmp_path, "val")


@pytest.mark.skipif(not Path(DEBIAN_DIR, "train-images-idx3-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST is not installed in {DEBIAN_DIR} (apt-get install dataset-fashion-mnist)")
def test_real_debian_files():
    dm = FashionMNISTDataModule(batch_size=8)
    sizes = {s: len(dm.load_split(s)[1]) for s in ("train", "val", "test")}
    assert sizes == {"train": 55000, "val": 5000, "test": 10000}
    # Fashion-MNIST has 6,000 training and 1,000 test images per class
    train_val = np.concatenate([dm.load_split("train")[1], dm.load_split("val")[1]])
    assert np.bincount(train_val, minlength=10).tolist() == [6000] * 10
    assert np.bincount(dm.load_split("test")[1], minlength=10).tolist() == [1000] * 10
    x, lengths, y = next(iter(dm.test_dataloader()))
    assert x.shape == (8, 1024, 1) and -1 <= x.min() and x.max() <= 1
    grid = x[0, :, 0].reshape(32, 32)
    assert (grid[:2] == -1).all() and grid[2:30, 2:30].max() > 0  # padding black, garment visible
