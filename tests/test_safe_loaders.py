"""Files a user hands us are never unpickled as they ask: CIFAR-10 batches go through a restricted unpickler,
and every checkpoint load passes ``weights_only=True`` (checked here with torch's legacy default forced on)."""

from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ssmzoo.data.lra.image import LRAImageDataModule, read_cifar_batch


@pytest.fixture(autouse=True)
def _data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMZOO_DATA", str(tmp_path / "cache"))


class _Runs:
    """Pickles as a call of ``function(*args)``: what a crafted file does to run code while it loads."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _official_batch(n: int, seed: int) -> dict:
    """A batch in the layout of the official ``cifar-10-batches-py`` files: bytes keys, a (n, 3072) uint8 array,
    Python int labels, bytes file names."""
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"image_{i}.png".encode() for i in range(n)],
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_real_format_loads(tmp_path, protocol):
    """The official files are protocol-2 pickles of numpy arrays (numpy 1, Python 2); protocols 4 and 5 are what
    a batch re-saved by Python 3 looks like. Each loads, with the same pixels and labels."""
    batch = _official_batch(7, seed=protocol)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    images, labels = read_cifar_batch(path)
    assert images.shape == (7, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert labels.tolist() == batch[b"labels"]


def test_cifar_numpy_int_labels_load(tmp_path):
    """Labels saved as numpy integers (a batch written with numpy scalars) are array reconstruction too."""
    batch = _official_batch(3, seed=0)
    batch[b"labels"] = [np.int64(v) for v in batch[b"labels"]]
    (tmp_path / "b").write_bytes(pickle.dumps(batch))
    assert read_cifar_batch(tmp_path / "b")[1].tolist() == [int(v) for v in batch[b"labels"]]


def _crafted(marker: Path) -> list[tuple[str, object]]:
    """Payloads that would create ``marker`` if the loader ran them."""
    return [
        ("os.system", _Runs(os.system, f"touch {marker}")),
        ("builtins.open", _Runs(open, str(marker), "w")),
        ("builtins.exec", _Runs(exec, f"open({str(marker)!r}, 'w').close()")),
        ("subprocess.call", _Runs(subprocess.call, ["touch", str(marker)])),
        ("pathlib.Path.touch", _Runs(Path.touch, marker)),
        ("numpy.save", _Runs(np.save, str(marker), np.zeros(1))),  # numpy, but not array reconstruction
    ]


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize("where", ["top", "inside"])
def test_cifar_crafted_pickle_refused_and_not_run(tmp_path, index, where):
    marker = tmp_path / "ran"
    name, payload = _crafted(marker)[index]
    batch = _official_batch(2, seed=1)
    if where == "top":
        obj = payload
    else:  # hidden among the official keys, after the real data
        batch[b"filenames"] = [b"a.png", payload]
        obj = batch
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_1 is not an official CIFAR-10 python batch") as error:
        read_cifar_batch(path)
    assert "names the global" in str(error.value)
    assert not marker.exists(), f"the {name} payload ran"


def test_cifar_object_array_refused(tmp_path):
    """An object array's items are pickles of their own: refused at its dtype."""
    batch = _official_batch(2, seed=0)
    batch[b"data"] = np.array([1, "x"], dtype=object)
    (tmp_path / "b").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match=r"b is not an official CIFAR-10 .*Python objects"):
        read_cifar_batch(tmp_path / "b")


def test_cifar_datamodule_refuses_crafted_file(tmp_path):
    """Through the datamodule, as ``ssmzoo fit --config configs/lra/image/...`` reads it."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "ran"
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(_official_batch(4, seed=i), protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(_official_batch(4, seed=9), protocol=2))
    good = LRAImageDataModule(str(tmp_path), val_size=2)
    assert len(good.load_split("train")[1]) == 18
    (folder / "data_batch_3").write_bytes(pickle.dumps(_Runs(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(ValueError, match="data_batch_3 is not an official CIFAR-10"):
        LRAImageDataModule(str(tmp_path), val_size=2).load_split("train")
    assert not marker.exists()
