"""LRA Text (IMDB reviews as bytes, up to 4,096) and Retrieval (AAN citation pairs as bytes, up to
4,000 each), 2 classes each. Byte-level tokens: id = byte + 1, PAD = 0, vocabulary 257."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..paths import data_root
from .common import ClassificationDataModule, holdout, require_dir

VOCAB_SIZE = 257
_HOW_IMDB = ("Download the IMDB reviews (aclImdb_v1.tar.gz from ai.stanford.edu/~amaas/data/sentiment/), "
             "extract it and pass --data.init_args.data_dir <folder containing aclImdb> "
             "(or extract it to $SSMZOO_DATA/imdb).")
_HOW_AAN = ("Download the LRA release (lra_release.gz), extract it, and pass "
            "--data.init_args.data_dir <...>/lra_release/tsv_data (holding new_aan_pairs.{train,eval,test}.tsv; "
            "or extract the release to $SSMZOO_DATA).")


def default_imdb_dir() -> Path:
    """Where IMDB is looked for when data_dir is None: ``$SSMZOO_DATA/imdb``."""
    return data_root() / "imdb"


def default_aan_dir() -> Path:
    """Where the AAN pairs are looked for when data_dir is None: ``$SSMZOO_DATA/lra_release/tsv_data``."""
    return data_root() / "lra_release" / "tsv_data"


# An empty document still needs one position: it becomes a single NUL byte (id 1).
EMPTY_DOCUMENT = np.array([1], dtype=np.int64)


def encode_bytes(text: str, max_length: int) -> np.ndarray:
    """UTF-8 bytes of ``text``, cut to ``max_length``, as ids byte + 1."""
    ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)[:max_length].astype(np.int64) + 1
    return ids if len(ids) else EMPTY_DOCUMENT


class LRATextDataModule(ClassificationDataModule):
    """IMDB sentiment from the ``aclImdb/{train,test}/{pos,neg}/*.txt`` release.

    LRA has no validation split and selects on test; ``val_size=0`` (default) does the same,
    ``val_size > 0`` holds that many training reviews out instead."""

    num_classes = 2
    vocab_size = VOCAB_SIZE

    def __init__(
        self,
        data_dir: str | None = None,
        max_length: int = 4096,
        val_size: int = 0,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ValueError(f"LRATextDataModule: max_length must be an int >= 1, got {max_length!r}")
        if not isinstance(val_size, int) or isinstance(val_size, bool) or val_size < 0:
            raise ValueError(f"LRATextDataModule: val_size must be an int >= 0, got {val_size!r}")
        self.data_dir, self.max_length, self.val_size = data_dir, max_length, val_size

    def _read(self, part: str) -> tuple[list[np.ndarray], np.ndarray]:
        root = require_dir(self.data_dir or default_imdb_dir(), "LRA Text (IMDB) data_dir", _HOW_IMDB)
        root = root / "aclImdb" if (root / "aclImdb").is_dir() else root
        seqs, labels = [], []
        for label, sub in ((0, "neg"), (1, "pos")):
            folder = root / part / sub
            files = sorted(folder.glob("*.txt"))
            if not files:
                raise FileNotFoundError(f"LRA Text: no reviews in {folder}. {_HOW_IMDB}")
            for f in files:
                seqs.append(encode_bytes(f.read_text(encoding="utf-8", errors="replace"), self.max_length))
                labels.append(label)
        return seqs, np.array(labels, dtype=np.int64)

    def _source(self, split: str) -> str:
        part = "test" if split == "test" or (split == "val" and self.val_size == 0) else "train"
        return str(Path(self.data_dir or default_imdb_dir()) / "aclImdb" / part)

    def _load(self, split: str):
        if split == "test" or (split == "val" and self.val_size == 0):
            return self._read("test")
        seqs, labels = self._read("train")
        if self.val_size == 0:
            return seqs, labels
        keep, held = holdout(len(labels), self.val_size, self.seed, "val_size")
        idx = keep if split == "train" else held
        return [seqs[i] for i in idx], labels[idx]


def read_aan_tsv(path: Path, max_length: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Rows ``label \\t id1 \\t id2 \\t text1 \\t text2`` (the LRA files have no header)."""
    if not path.is_file():
        raise FileNotFoundError(f"LRA Retrieval: missing {path}. {_HOW_AAN}")
    pairs, labels = [], []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if len(row) != 5:
                raise ValueError(f"LRA Retrieval: {path}, line {lineno}: expected 5 tab-separated columns "
                                 f"(label, id1, id2, text1, text2), got {len(row)}")
            try:
                label = float(row[0])
            except ValueError:
                raise ValueError(f"LRA Retrieval: {path}, line {lineno}: label {row[0]!r} is not a number") from None
            if label not in (0.0, 1.0):
                raise ValueError(f"LRA Retrieval: {path}, line {lineno}: label must be 0 or 1, got {row[0]!r}")
            pairs.append((encode_bytes(row[3], max_length), encode_bytes(row[4], max_length)))
            labels.append(int(label))
    return pairs, np.array(labels, dtype=np.int64)


class LRARetrievalDataModule(ClassificationDataModule):
    """AAN document matching: inputs (B, 2, L) and lengths (B, 2), one row per document."""

    num_classes = 2
    vocab_size = VOCAB_SIZE

    def __init__(
        self,
        data_dir: str | None = None,
        max_length: int = 4000,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ValueError(f"LRARetrievalDataModule: max_length must be an int >= 1, got {max_length!r}")
        self.data_dir, self.max_length = data_dir, max_length

    def _source(self, split: str) -> str:
        name = {"train": "train", "val": "eval", "test": "test"}[split]
        return str(Path(self.data_dir or default_aan_dir()) / f"new_aan_pairs.{name}.tsv")

    def _load(self, split: str):
        require_dir(self.data_dir or default_aan_dir(), "LRA Retrieval (AAN) data_dir", _HOW_AAN)
        return read_aan_tsv(Path(self._source(split)), self.max_length)
