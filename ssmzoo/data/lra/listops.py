"""LRA ListOps (Nangia & Bowman 2018, as set up by Tay et al., Long Range Arena, ICLR 2021).

A sample is a nested list operation, e.g. ``[MAX 2 9 [MIN 4 7 ] 0 ]`` (value 9); the label is its value
0-9, so there are 10 classes. This file holds the four pieces of the task:

* a seeded generator drawing trees from the LRA generator's distribution (PAPERS.md, ListOps): below the
  maximum depth 10 a node is a digit with probability 0.75, else an operator (MIN, MAX, MED = integer
  median, SM = sum mod 10) with 2-10 arguments drawn uniformly; at the maximum depth it is always a digit.
  Only trees with ``min_length < tokens < max_length`` are kept (500 and 2,000 in LRA), all distinct.
* the official file format, ``listops-1000/basic_{train,val,test}.tsv``: a header ``Source<TAB>Target``,
  then one row per sample. ``Source`` is the LRA generator's textual form of the tree, which writes an
  operator with its arguments as left-nested pairs in parentheses: ``[MAX 2 9 ]`` is
  ``( ( ( [MAX 2 ) 9 ) ] )``. ``Target`` is the value.
* the tokenisation of the S4 repository: parentheses dropped; PAD = 0, digits 0-9 = 1-10, ``[MIN`` 11,
  ``[MAX`` 12, ``[MED`` 13, ``[SM`` 14, ``]`` 15 (vocabulary 16).
* ``ListOpsDataModule``: official files from a folder, or generated ones cached under
  ``$SSMZOO_DATA/lra/listops/<parameter hash>/``; batches ``(tokens, lengths, labels)``.

``python -m ssmzoo.data.lra.listops --out DIR`` writes the three files (``ssmzoo data listops`` wraps it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..paths import data_root

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
# LRA's VALUE_P: below the maximum depth a node is an operator with probability 0.25, else a digit.
OPERATOR_PROBABILITY = 0.25
SPLITS = ("train", "val", "test")
PAD = 0
VOCAB: dict[str, int] = {
    **{str(d): d + 1 for d in range(10)},
    "[MIN": 11,
    "[MAX": 12,
    "[MED": 13,
    "[SM": 14,
    END: 15,
}
VOCAB_SIZE = 16
NUM_CLASSES = 10
# Bump when the generator's output for a given seed changes, so old caches are not reused.
GENERATOR_VERSION = 1
# Give up when this many candidates in a row are rejected: the length window (or the number of distinct
# trees in it) cannot supply the requested samples.
MAX_CONSECUTIVE_REJECTIONS = 1_000_000
_HOW_TO_GET = (
    "Write generated files with `ssmzoo data listops --out DIR` (or `python -m ssmzoo.data.lra.listops "
    "--out DIR`), or take listops-1000/ from the official LRA release (lra_release.gz, "
    "https://github.com/google-research/long-range-arena)."
)
_STRIP_PARENTHESES = str.maketrans("", "", "()")
_DIGIT_ARGUMENTS = tuple(f" {d} )" for d in range(10))  # a digit argument in the Source form


# ----------------------------------------------------------------------------------------------------
# Operators and generator


def apply_operator(operator: str, arguments: Sequence[int]) -> int:
    """The value of ``operator`` on digit ``arguments``, as LRA defines it.

    MED is ``int(np.median(...))``: the middle element, or for an even count the mean of the two middle
    elements rounded down (all values are non-negative). SM is the sum modulo 10."""
    if operator == "[MIN":
        return min(arguments)
    if operator == "[MAX":
        return max(arguments)
    if operator == "[MED":
        ordered = sorted(arguments)
        half = len(ordered) // 2
        if len(ordered) % 2:
            return ordered[half]
        return (ordered[half - 1] + ordered[half]) // 2
    if operator == "[SM":
        return sum(arguments) % 10
    raise ValueError(f"operator must be one of {OPERATORS}, got {operator!r}")


class _TooLong(Exception):
    """Raised inside the generator once a tree reaches the length limit (it would be rejected anyway)."""


def sample_tree(
    rng: random.Random, max_depth: int = 10, max_args: int = 10, length_limit: int | None = None
) -> tuple[str, int, int] | None:
    """Draw one tree from the LRA ListOps distribution.

    Returns ``(source, n_tokens, value)`` with ``source`` in the official parenthesised form and
    ``n_tokens`` counting digits, operators and ``]`` (LRA's length), or None as soon as the tree reaches
    ``length_limit`` tokens. Stopping early leaves the distribution of the trees that are kept unchanged:
    such a tree would be rejected, and the next draw starts from fresh, independent random numbers."""
    uniform = rng.random
    limit = length_limit if length_limit is not None else float("inf")
    n_tokens = 0

    def operator_node(depth: int) -> tuple[str, int]:
        # An operator node at `depth` (1 = root). Digit children are written inline (three quarters of
        # all nodes), which halves the number of calls.
        nonlocal n_tokens
        n_args = 2 + int(uniform() * (max_args - 1))  # uniform on 2..max_args
        operator = OPERATORS[int(uniform() * len(OPERATORS))]
        n_tokens += 2  # the operator and its closing bracket
        children_may_branch = depth + 1 < max_depth
        # ( ( ... ( OP a1 ) a2 ) ... an ) ] ): LRA's to_string of ((((OP, a1), a2), ...), END).
        parts = ["( " * (n_args + 1), operator]
        values = []
        for _ in range(n_args):
            if children_may_branch and uniform() < OPERATOR_PROBABILITY:
                text, value = operator_node(depth + 1)
                if n_tokens >= limit:
                    raise _TooLong
                parts.append(f" {text} )")
            else:
                value = int(uniform() * 10)
                n_tokens += 1
                parts.append(_DIGIT_ARGUMENTS[value])
            values.append(value)
        parts.append(" ] )")
        return "".join(parts), apply_operator(operator, values)

    if max_depth > 1 and uniform() < OPERATOR_PROBABILITY:
        try:
            source, value = operator_node(1)
        except _TooLong:
            return None
    else:
        value = int(uniform() * 10)
        source, n_tokens = str(value), 1
    if n_tokens >= limit:
        return None
    return source, n_tokens, value


def max_tree_tokens(max_depth: int, max_args: int) -> int:
    """The most tokens a tree can have: every node above the last level an operator with max_args args."""
    tokens = 1
    for _ in range(max_depth - 1):
        tokens = 2 + max_args * tokens
    return tokens


def _check_generator_args(
    n_train: int, n_val: int, n_test: int, min_length: int, max_length: int, max_depth: int, max_args: int
) -> None:
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    if max_args < 2:
        raise ValueError(f"max_args must be >= 2, got {max_args}")
    if min_length < 0 or max_length <= min_length + 1:
        raise ValueError(
            "need 0 <= min_length and min_length + 1 < max_length (kept trees have "
            f"min_length < tokens < max_length), got min_length={min_length}, max_length={max_length}"
        )
    most = max_tree_tokens(max_depth, max_args)
    if min_length >= most:
        raise ValueError(
            f"min_length={min_length} cannot be exceeded: trees with max_depth={max_depth} and "
            f"max_args={max_args} have at most {most} tokens"
        )


def generate_samples(
    n_samples: int,
    seed: int,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
) -> list[tuple[str, int]]:
    """``n_samples`` distinct ``(source, value)`` pairs with ``min_length < tokens < max_length``.

    Rejection sampling from the LRA distribution (as LRA does, duplicates are dropped so no sample is
    in two splits). The stream is ``random.Random`` seeded from ``seed``: same seed, same samples."""
    _check_generator_args(n_samples, 0, 0, min_length, max_length, max_depth, max_args)
    rng = random.Random(f"ssmzoo-listops-v{GENERATOR_VERSION}:{seed}")
    seen: set[str] = set()
    samples: list[tuple[str, int]] = []
    rejected_in_a_row = 0
    while len(samples) < n_samples:
        tree = sample_tree(rng, max_depth, max_args, length_limit=max_length)
        if tree is not None and tree[1] > min_length and tree[0] not in seen:
            seen.add(tree[0])
            samples.append((tree[0], tree[2]))
            rejected_in_a_row = 0
            continue
        rejected_in_a_row += 1
        if rejected_in_a_row >= MAX_CONSECUTIVE_REJECTIONS:
            raise RuntimeError(
                f"ListOps generation stalled after {len(samples)} of {n_samples} samples: "
                f"{MAX_CONSECUTIVE_REJECTIONS} candidates in a row were outside "
                f"{min_length} < tokens < {max_length} or duplicates; widen the length window"
            )
    return samples


def write_tsv(path: str | os.PathLike, rows: Sequence[tuple[str, int]]) -> None:
    """Write rows in the official format: header ``Source<TAB>Target``, CRLF line ends (Python's csv
    writer, which LRA used)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write("Source\tTarget\r\n")
        f.writelines(f"{source}\t{target}\r\n" for source, target in rows)


def generate_listops(
    out_dir: str | os.PathLike,
    n_train: int = 96_000,
    n_val: int = 2_000,
    n_test: int = 2_000,
    seed: int = 0,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
) -> Path:
    """Generate ListOps and write ``basic_{train,val,test}.tsv`` in ``out_dir`` (created if needed).

    Defaults are LRA's (96k / 2k / 2k, 500 < tokens < 2,000, depth 10, up to 10 arguments). Returns
    ``out_dir`` as a Path."""
    _check_generator_args(n_train, n_val, n_test, min_length, max_length, max_depth, max_args)
    samples = generate_samples(n_train + n_val + n_test, seed, min_length, max_length, max_depth, max_args)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val)}
    bounds["test"] = (n_train + n_val, n_train + n_val + n_test)
    for split, (start, stop) in bounds.items():
        write_tsv(out / f"basic_{split}.tsv", samples[start:stop])
    return out


# ----------------------------------------------------------------------------------------------------
# Official files and tokenisation


def tokenize(source: str) -> list[int]:
    """Token ids of a ``Source`` string: parentheses dropped, whitespace-separated tokens looked up in
    ``VOCAB``. An unknown token raises ValueError naming it."""
    tokens = source.translate(_STRIP_PARENTHESES).split()
    try:
        return [VOCAB[t] for t in tokens]
    except KeyError as e:
        raise ValueError(
            f"unknown token {e.args[0]!r} (expected digits 0-9, [MIN, [MAX, [MED, [SM, ] and parentheses)"
        ) from None


@dataclass(frozen=True)
class ListOpsSplit:
    """One split, tokenised: all sequences concatenated in ``tokens`` (uint8 ids), sample i is
    ``tokens[offsets[i]:offsets[i + 1]]`` with label ``labels[i]``."""

    tokens: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def read_listops_tsv(path: str | os.PathLike, max_tokens: int | None = None) -> ListOpsSplit:
    """Read and tokenise an official-format ListOps TSV.

    Sequences longer than ``max_tokens`` are cut to their first ``max_tokens`` tokens (with a warning).
    A missing file raises FileNotFoundError; a malformed row raises ValueError naming the file, the line
    and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ListOps file not found: {path}. {_HOW_TO_GET}")
    chunks: list[np.ndarray] = []
    lengths: list[int] = []
    labels: list[int] = []
    n_cut = 0
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n")
        if header.split("\t") != ["Source", "Target"]:
            raise ValueError(f"{path}, line 1: expected the header 'Source<TAB>Target', got {header[:80]!r}")
        for line_number, line in enumerate(f, start=2):
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != 2:
                raise ValueError(
                    f"{path}, line {line_number}: expected 2 tab-separated columns (Source, Target), "
                    f"got {len(fields)}"
                )
            source, target = fields
            try:
                label = int(target)
            except ValueError:
                raise ValueError(f"{path}, line {line_number}: Target must be an integer, got {target!r}") from None
            if not 0 <= label < NUM_CLASSES:
                raise ValueError(f"{path}, line {line_number}: Target must be in 0-9, got {label}")
            words = source.translate(_STRIP_PARENTHESES).split()
            try:
                ids = np.fromiter(map(VOCAB.__getitem__, words), dtype=np.uint8, count=len(words))
            except KeyError as e:
                raise ValueError(
                    f"{path}, line {line_number}: unknown token {e.args[0]!r} in Source "
                    "(expected digits 0-9, [MIN, [MAX, [MED, [SM, ] and parentheses)"
                ) from None
            if len(ids) == 0:
                raise ValueError(f"{path}, line {line_number}: Source has no tokens")
            if max_tokens is not None and len(ids) > max_tokens:
                ids = ids[:max_tokens]
                n_cut += 1
            chunks.append(ids)
            lengths.append(len(ids))
            labels.append(label)
    if n_cut:
        warnings.warn(f"{path}: cut {n_cut} sequences to their first {max_tokens} tokens", stacklevel=2)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint8)
    return ListOpsSplit(tokens=tokens, offsets=offsets, labels=np.asarray(labels, dtype=np.int64))


class ListOpsDataset(Dataset):
    """Samples ``(token ids (uint8 array), label)`` of one split."""

    def __init__(self, split: ListOpsSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        start, stop = self.split.offsets[index], self.split.offsets[index + 1]
        return self.split.tokens[start:stop], int(self.split.labels[index])


def collate_listops(batch: Sequence[tuple[np.ndarray, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Stack samples into ``(tokens (B, L) right-padded with PAD=0, lengths (B,), labels (B,))``."""
    lengths = torch.tensor([len(ids) for ids, _ in batch], dtype=torch.long)
    tokens = torch.full((len(batch), int(lengths.max())), PAD, dtype=torch.long)
    for row, (ids, _) in enumerate(batch):
        tokens[row, : len(ids)] = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    labels = torch.tensor([label for _, label in batch], dtype=torch.long)
    return tokens, lengths, labels


# ----------------------------------------------------------------------------------------------------
# LightningDataModule


class ListOpsDataModule(LightningDataModule):
    """LRA ListOps: 10 classes, vocabulary 16 (PAD = 0), sequences up to 2,000 tokens.

    Args:
        data_dir: a folder holding the official ``basic_{train,val,test}.tsv``; when None, data is
            generated (with the arguments below) and cached under
            ``$SSMZOO_DATA/lra/listops/<hash of the arguments>/``.
        n_train, n_val, n_test, min_length, max_length, max_depth, max_args, seed: generator settings
            (LRA's by default); ignored when ``data_dir`` is given.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        max_tokens: longer sequences are cut to their first ``max_tokens`` tokens (with a warning).
        pin_memory: DataLoader pin_memory.
        shuffle: shuffle the training split each epoch.
    """

    num_classes: int = NUM_CLASSES
    vocab_size: int = VOCAB_SIZE

    def __init__(
        self,
        data_dir: str | None = None,
        n_train: int = 96_000,
        n_val: int = 2_000,
        n_test: int = 2_000,
        min_length: int = 500,
        max_length: int = 2000,
        max_depth: int = 10,
        max_args: int = 10,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        max_tokens: int = 2000,
        pin_memory: bool = False,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        if data_dir is None:
            _check_generator_args(n_train, n_val, n_test, min_length, max_length, max_depth, max_args)
            for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
                if value < 1:
                    raise ValueError(f"{name} must be >= 1, got {value}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.generator_args = {
            "n_train": n_train,
            "n_val": n_val,
            "n_test": n_test,
            "seed": seed,
            "min_length": min_length,
            "max_length": max_length,
            "max_depth": max_depth,
            "max_args": max_args,
        }
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.max_tokens = max_tokens
        self.pin_memory = pin_memory
        self.shuffle = shuffle
        self.splits: dict[str, ListOpsSplit] = {}

    @property
    def split_dir(self) -> Path:
        """The folder the TSV files are read from."""
        if self.data_dir is not None:
            return Path(self.data_dir).expanduser()
        key = json.dumps({"version": GENERATOR_VERSION, **self.generator_args}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return data_root() / "lra" / "listops" / digest

    def _is_complete(self) -> bool:
        return all((self.split_dir / f"basic_{s}.tsv").is_file() for s in SPLITS)

    def prepare_data(self) -> None:
        """Check the official files are there, or generate and cache the data once."""
        folder = self.split_dir
        if self.data_dir is not None:
            if not folder.is_dir():
                raise FileNotFoundError(f"ListOps data_dir not found: {folder}. {_HOW_TO_GET}")
            missing = [f"basic_{s}.tsv" for s in SPLITS if not (folder / f"basic_{s}.tsv").is_file()]
            if missing:
                raise FileNotFoundError(f"ListOps data_dir {folder} lacks {', '.join(missing)}. {_HOW_TO_GET}")
            return
        if self._is_complete():
            return
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Generate into a private folder, then rename: a crash or a concurrent process never leaves a
        # half-written cache behind.
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            generate_listops(staging, **self.generator_args)
            (staging / "params.json").write_text(
                json.dumps({"version": GENERATOR_VERSION, **self.generator_args}, indent=1)
            )
            try:
                os.rename(staging, folder)
            except OSError:
                if not self._is_complete():  # not a concurrent writer finishing first
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def load_split(self, split: str) -> ListOpsSplit:
        """The tokenised split ``"train"``, ``"val"`` or ``"test"`` (read once, then kept)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self.splits:
            if self.data_dir is not None or not self._is_complete():
                self.prepare_data()  # checks the official files, or generates the missing cache
            self.splits[split] = read_listops_tsv(self.split_dir / f"basic_{split}.tsv", self.max_tokens)
        return self.splits[split]

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in needed.get(stage, SPLITS) if stage is not None else SPLITS:
            self.load_split(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            ListOpsDataset(self.load_split(split)),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_listops,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def majority_class_accuracy(self, split: str = "test") -> float:
        """Accuracy on ``split`` of always predicting the training split's most frequent label."""
        counts = np.bincount(self.load_split("train").labels, minlength=NUM_CLASSES)
        majority = int(np.argmax(counts))
        return float(np.mean(self.load_split(split).labels == majority))


# ----------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m ssmzoo.data.lra.listops",
        description="Generate LRA ListOps in the official format (basic_{train,val,test}.tsv).",
    )
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument("--n-train", type=int, default=96_000)
    parser.add_argument("--n-val", type=int, default=2_000)
    parser.add_argument("--n-test", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-length", type=int, default=500, help="keep trees with more tokens than this")
    parser.add_argument("--max-length", type=int, default=2000, help="keep trees with fewer tokens than this")
    parser.add_argument("--max-depth", type=int, default=10)
    parser.add_argument("--max-args", type=int, default=10)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = generate_listops(
        args.out,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        seed=args.seed,
        min_length=args.min_length,
        max_length=args.max_length,
        max_depth=args.max_depth,
        max_args=args.max_args,
    )
    seconds = time.perf_counter() - start
    total = args.n_train + args.n_val + args.n_test
    print(f"wrote {total} samples to {out} in {seconds:.1f} s ({total / seconds:.0f} samples/s)")
    for split in SPLITS:
        data = read_listops_tsv(out / f"basic_{split}.tsv")
        if len(data) == 0:
            continue
        share = np.bincount(data.labels, minlength=NUM_CLASSES) / len(data)
        print(
            f"{split}: {len(data)} samples, tokens {int(data.lengths.min())}-{int(data.lengths.max())} "
            f"(mean {data.lengths.mean():.0f}), label shares "
            + " ".join(f"{d}:{p:.3f}" for d, p in enumerate(share))
        )
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
