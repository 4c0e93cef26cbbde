"""LRA Image, Pathfinder, Text and Retrieval loaders on tiny files written in the official formats."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from ssmzoo.data.lra import pathfinder
from ssmzoo.data.lra.image import LRAImageDataModule, to_grayscale
from ssmzoo.data.lra.pathfinder import PathfinderDataModule
from ssmzoo.data.lra.text import LRARetrievalDataModule, LRATextDataModule


@pytest.fixture(autouse=True)
def _data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path / "cache"))


def write_cifar(folder, n_per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
             b"labels": list(rng.integers(0, 10, n_per_batch))}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)


def test_grayscale_weights_by_hand():
    img = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    img[0, 0, 0] = (255, 0, 0)
    img[0, 0, 1] = (0, 255, 0)
    img[0, 0, 2] = (0, 0, 255)
    img[0, 0, 3] = (100, 100, 100)
    gray = to_grayscale(img)
    assert gray.shape == (1, 1024)
    assert gray[0, :4].tolist() == [76, 150, 29, 100]  # round(255·0.2989), round(255·0.5870), ...


def test_image_datamodule(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    dm = LRAImageDataModule(str(tmp_path), val_size=5, batch_size=3)
    dm.setup()
    assert len(dm.load_split("train")[1]) == 15 and len(dm.load_split("val")[1]) == 5
    assert len(dm.load_split("test")[1]) == 4
    x, lengths, y = next(iter(dm.train_dataloader()))
    assert x.shape == (3, 1024, 1) and x.dtype == torch.float32 and lengths.tolist() == [1024] * 3
    tok = LRAImageDataModule(str(tmp_path), tokens=True, val_size=5)
    ids = tok.load_split("test")[0][0]
    assert ids.min() >= 1 and ids.max() <= 256 and tok.vocab_size == 257
    # pixel order is row-major: sequence position 32 is row 1, column 0
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f)[b"data"][0].reshape(3, 32, 32)
    expect = np.round(raw[:, 1, 0].astype(np.float32) @ np.array([0.2989, 0.5870, 0.1140], dtype=np.float32))
    assert ids[32] == int(expect) + 1


def test_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="looked for the folder .*cifar-10-python"):
        LRAImageDataModule(str(tmp_path / "nowhere")).setup()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch is not an official CIFAR-10"):
        LRAImageDataModule(str(tmp_path / "c")).load_split("test")


def write_pathfinder(folder, n=20, resolution=32, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "imgs" / "0").mkdir(parents=True)
    (folder / "metadata").mkdir()
    lines, labels = [], []
    for i in range(n):
        label = int(rng.integers(0, 2))
        arr = np.full((resolution, resolution), 255 * label, dtype=np.uint8)
        arr[0, 0] = i
        Image.fromarray(arr).save(folder / "imgs" / "0" / f"sample_{i}.png")
        lines.append(f"imgs/0 sample_{i}.png {i} {label} 0.5 1")
        labels.append(label)
    (folder / "metadata" / "0.npy").write_text("\n".join(lines) + "\n")
    return labels


def test_pathfinder_datamodule(tmp_path, monkeypatch):
    labels = write_pathfinder(tmp_path / "pf")
    dm = PathfinderDataModule(str(tmp_path / "pf"), batch_size=4)
    sizes = [len(dm.load_split(s)[1]) for s in ("train", "val", "test")]
    assert sizes == [16, 2, 2]
    # every sample lands in exactly one split, with its label, and pixels in [-1, 1]
    seen = {}
    for s in ("train", "val", "test"):
        seqs, ys = dm.load_split(s)
        for seq, y in zip(seqs, ys):
            i = int(round((seq[0, 0] + 1) * 127.5))
            seen[i] = y
            assert seq.shape == (1024, 1) and -1 <= seq.min() and seq.max() <= 1
            assert (seq[1:, 0] == (1.0 if y else -1.0)).all()
    assert seen == dict(enumerate(labels))
    # decoded once: a second datamodule over the same, unchanged files reads the cache, not the PNGs
    monkeypatch.setattr(pathfinder, "read_image", _no_decoding)
    again = PathfinderDataModule(str(tmp_path / "pf"))
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(np.stack(again.load_split(split)[0]), np.stack(dm.load_split(split)[0]))


def _no_decoding(*args):
    raise AssertionError("decoded a PNG again")


def _touch_later(path):
    """Move the file's modification time 2 s on, as an edit on a coarse-clock file system would."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


def test_pathfinder_cache_follows_the_files_it_was_built_from(tmp_path):
    """The cache is keyed by the files' names, sizes and mtimes, not the folder name: after the labels or an
    image change in place, the datamodule returns the new ones."""
    labels = write_pathfinder(tmp_path / "pf", n=10)
    first = PathfinderDataModule(str(tmp_path / "pf"))._decoded()
    assert first[1].tolist() == labels
    meta = tmp_path / "pf" / "metadata" / "0.npy"
    lines = meta.read_text().splitlines()
    flipped = [" ".join(f if i != 3 else str(1 - int(f)) for i, f in enumerate(line.split())) for line in lines]
    meta.write_text("\n".join(flipped) + "\n")  # same size, same folder: only the content and mtime differ
    _touch_later(meta)
    second = PathfinderDataModule(str(tmp_path / "pf"))._decoded()
    assert second[1].tolist() == [1 - y for y in labels]

    from PIL import Image

    image = tmp_path / "pf" / "imgs" / "0" / "sample_3.png"
    Image.fromarray(np.full((32, 32), 77, dtype=np.uint8)).save(image)
    _touch_later(image)
    third = PathfinderDataModule(str(tmp_path / "pf"))._decoded()
    assert (third[0][3] == 77).all() and not (second[0][3] == 77).all()
    np.testing.assert_array_equal(np.delete(third[0], 3, 0), np.delete(second[0], 3, 0))


def test_pathfinder_errors(tmp_path):
    write_pathfinder(tmp_path / "pf", n=4)
    (tmp_path / "pf" / "metadata" / "1.npy").write_text("imgs/0 sample_0.png 0\n")
    with pytest.raises(ValueError, match=r"1\.npy, line 1"):
        PathfinderDataModule(str(tmp_path / "pf")).load_split("train")
    (tmp_path / "e" / "metadata").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no metadata"):
        PathfinderDataModule(str(tmp_path / "e")).load_split("train")
    with pytest.raises(ValueError, match="resolution"):
        PathfinderDataModule(str(tmp_path), resolution=33)
    with pytest.raises(ValueError, match="val_fraction"):
        PathfinderDataModule(str(tmp_path), val_fraction="0.1")
    (tmp_path / "gone" / "metadata").mkdir(parents=True)
    (tmp_path / "gone" / "metadata" / "0.npy").write_text("imgs/0 missing.png 0 1\n")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        PathfinderDataModule(str(tmp_path / "gone")).load_split("train")
    (tmp_path / "blank" / "metadata").mkdir(parents=True)
    (tmp_path / "blank" / "metadata" / "0.npy").write_text("\n")
    with pytest.raises(ValueError, match="list no samples.*--data.init_args.data_dir"):
        PathfinderDataModule(str(tmp_path / "blank")).load_split("train")


def write_imdb(root):
    texts = {}
    for part in ("train", "test"):
        for sub in ("pos", "neg"):
            d = root / "aclImdb" / part / sub
            d.mkdir(parents=True)
            for i in range(3):
                text = f"{part} {sub} review {i} é"
                (d / f"{i}_7.txt").write_text(text, encoding="utf-8")
                texts[(part, sub, i)] = text
    return texts


def test_text_datamodule(tmp_path):
    write_imdb(tmp_path)
    dm = LRATextDataModule(str(tmp_path), max_length=12, batch_size=4)
    seqs, labels = dm.load_split("train")
    assert len(seqs) == 6 and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert seqs[0].tolist() == [b + 1 for b in "train neg re".encode()]
    val, test = dm.load_split("val"), dm.load_split("test")
    assert len(val[0]) == len(test[0]) == 6  # LRA selects on test: no separate validation set
    full = LRATextDataModule(str(tmp_path), max_length=4096).load_split("test")[0]
    assert full[0][-2:].tolist() == [b + 1 for b in "é".encode()]  # bytes, not characters
    held = LRATextDataModule(str(tmp_path), val_size=2)
    assert len(held.load_split("train")[1]) == 4 and len(held.load_split("val")[1]) == 2
    x, lengths, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.long and (x[torch.arange(4), lengths - 1] > 0).all()


def test_retrieval_datamodule(tmp_path):
    rows = ["1.0\ta\tb\tfirst doc\tsecond", "0\tc\td\tx\t"]
    for name in ("train", "eval", "test"):
        (tmp_path / f"new_aan_pairs.{name}.tsv").write_text("\n".join(rows) + "\n")
    dm = LRARetrievalDataModule(str(tmp_path), batch_size=2)
    x, lengths, y = next(iter(dm.test_dataloader()))
    assert x.shape == (2, 2, 9) and lengths.tolist() == [[9, 6], [1, 1]] and y.tolist() == [1, 0]
    assert x[0, 1, :6].tolist() == [b + 1 for b in b"second"]
    (tmp_path / "new_aan_pairs.eval.tsv").write_text("1\ta\tb\tonly four\n")
    with pytest.raises(ValueError, match=r"eval\.tsv, line 1: expected 5"):
        dm.load_split("val")
    (tmp_path / "new_aan_pairs.eval.tsv").write_text("yes\ta\tb\tc\td\n")
    with pytest.raises(ValueError, match="label 'yes' is not a number"):
        LRARetrievalDataModule(str(tmp_path)).load_split("val")
    with pytest.raises(FileNotFoundError, match="lra_release"):
        LRARetrievalDataModule(str(tmp_path / "none")).load_split("train")


def test_bad_arguments_and_empty_splits_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="LRATextDataModule: max_length"):
        LRATextDataModule(str(tmp_path), max_length=0)
    with pytest.raises(ValueError, match="val_size"):
        LRATextDataModule(str(tmp_path), val_size=-1)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        LRATextDataModule(str(tmp_path), batch_size="16")
    with pytest.raises(ValueError, match="val_size"):
        LRAImageDataModule(str(tmp_path), val_size=50_000)
    write_imdb(tmp_path)
    with pytest.raises(ValueError, match="val_size=7 would hold out 7 of 6"):
        LRATextDataModule(str(tmp_path), val_size=7).load_split("train")
    # an empty Retrieval split names its file and the flag to pass
    for name in ("train", "eval", "test"):
        (tmp_path / f"new_aan_pairs.{name}.tsv").write_text("1\ta\tb\tx\ty\n" if name != "eval" else "")
    with pytest.raises(ValueError, match=r"val split is empty \(.*new_aan_pairs\.eval\.tsv.*--data\.init_args\.data_dir"):
        LRARetrievalDataModule(str(tmp_path)).setup("validate")


def test_training_order_follows_the_run_seed_and_epoch(tmp_path, monkeypatch):
    """Shuffling uses the run seed (Lightning's seed_everything) and the epoch, not the global RNG."""
    write_imdb(tmp_path)

    def first_epochs(seed):
        monkeypatch.setenv("PL_GLOBAL_SEED", str(seed))
        loader = LRATextDataModule(str(tmp_path), batch_size=6).train_dataloader()
        orders = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            orders.append([tuple(x.tolist()) for batch in loader for x in batch[0]])
        return orders

    torch.manual_seed(0)
    a = first_epochs(5)
    torch.manual_seed(1)  # the global RNG plays no part
    assert first_epochs(5) == a
    assert a[0] != a[1]  # a new order each epoch
    assert first_epochs(6) != a


def test_majority_baseline(tmp_path):
    write_imdb(tmp_path)
    dm = LRATextDataModule(str(tmp_path))
    assert dm.majority_class_accuracy("test") == pytest.approx(0.5)
