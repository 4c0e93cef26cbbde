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
import bisect
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
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
GENERATOR_VERSION = 2  # bump whenever the same seed would give other samples: it keys the cache
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


def _median(arguments: Sequence[int]) -> int:
    ordered = sorted(arguments)
    half = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[half]
    return (ordered[half - 1] + ordered[half]) // 2


def _sum_mod_10(arguments: Sequence[int]) -> int:
    return sum(arguments) % 10


# In the order of OPERATORS.
_OPERATIONS = (min, max, _median, _sum_mod_10)


def apply_operator(operator: str, arguments: Sequence[int]) -> int:
    """The value of ``operator`` on digit ``arguments``, as LRA defines it.

    MED is ``int(np.median(...))``: the middle element, or for an even count the mean of the two middle
    elements rounded down (all values are non-negative). SM is the sum modulo 10."""
    if operator not in OPERATORS:
        raise ValueError(f"operator must be one of {OPERATORS}, got {operator!r}")
    return _OPERATIONS[OPERATORS.index(operator)](arguments)


class _TooLong(Exception):
    """Raised inside the shape sampler once a tree reaches the length limit (it would be rejected)."""


# The shape of an operator node: (number of arguments, shapes of the arguments that are operators).
Shape = tuple[int, list["Shape"]]


class ListOpsSampler:
    """Draws trees from the LRA ListOps distribution, in two stages so rejection stays cheap.

    In LRA's generator the tree's shape (which nodes are operators, how many arguments each has) does not
    depend on which digits and operators fill it, and only the shape decides the length. So a shape is
    drawn first, and filled with digits and operators only if its length is kept. Two more savings leave
    the distribution unchanged: (1) for an operator node the shape needs only the argument count n
    (uniform on 2..max_args) and the number k of arguments that are operators (Binomial(n, 0.25) below
    the maximum depth), one draw; which k of the n positions they take is a uniform k-subset, drawn when
    filling, because the arguments are i.i.d.; (2) a shape stops growing once it reaches ``max_length``
    tokens, as it would be rejected anyway, and the next shape uses fresh random numbers.

    Shapes and labels come from two ``random.Random`` streams seeded from ``seed`` and drawn only through
    ``random()``, the one method whose sequence Python promises to keep for a given seed."""

    def __init__(self, seed: int, max_depth: int = 10, max_args: int = 10) -> None:
        self.max_depth = max_depth
        self.max_args = max_args
        self._shape_uniform = random.Random(f"ssmzoo-listops-v{GENERATOR_VERSION}:{seed}:shape").random
        self._label_uniform = random.Random(f"ssmzoo-listops-v{GENERATOR_VERSION}:{seed}:labels").random
        # Joint law of (n, k) for a node whose arguments may be operators.
        outcomes, cumulative, total = [], [], 0.0
        for n in range(2, max_args + 1):
            for k in range(n + 1):
                p = math.comb(n, k) * OPERATOR_PROBABILITY**k * (1 - OPERATOR_PROBABILITY) ** (n - k)
                total += p / (max_args - 1)
                outcomes.append((n, k))
                cumulative.append(total)
        cumulative[-1] = 1.0  # random() < 1, so bisect never runs past the last outcome
        self._outcomes = outcomes
        self._cumulative = cumulative

    def shape(self, length_limit: int) -> tuple[Shape | None, int] | None:
        """One tree shape and its token count (None for a single-digit tree), or None once the tree
        reaches ``length_limit`` tokens."""
        uniform = self._shape_uniform
        if self.max_depth == 1 or uniform() >= OPERATOR_PROBABILITY:
            return (None, 1) if length_limit > 1 else None  # the root is a digit
        outcomes, cumulative, max_depth, max_args = (
            self._outcomes,
            self._cumulative,
            self.max_depth,
            self.max_args,
        )
        n_tokens = 0

        def operator_shape(depth: int) -> Shape:
            nonlocal n_tokens
            if depth + 1 < max_depth:
                n, k = outcomes[bisect.bisect_right(cumulative, uniform())]
            else:  # arguments at the maximum depth are digits
                n, k = 2 + int(uniform() * (max_args - 1)), 0
            n_tokens += 2 + n - k  # operator, closing bracket, digit arguments
            if n_tokens >= length_limit:
                raise _TooLong
            return n, [operator_shape(depth + 1) for _ in range(k)]

        try:
            root = operator_shape(1)
        except _TooLong:
            return None
        return root, n_tokens

    def fill(self, shape: Shape | None) -> tuple[str, int]:
        """Digits and operators for ``shape``: ``(source in the official form, value)``."""
        uniform = self._label_uniform
        if shape is None:
            digit = int(uniform() * 10)
            return str(digit), digit

        def operator_node(node: Shape) -> tuple[str, int]:
            n, children = node
            which = int(uniform() * len(OPERATORS))
            digits = [int(uniform() * 10) for _ in range(n - len(children))]
            # ( ( ... ( OP a1 ) a2 ) ... an ) ] ): LRA's to_string of ((((OP, a1), a2), ...), END).
            if not children:
                text = "".join(map(_DIGIT_ARGUMENTS.__getitem__, digits))
                return f"{'( ' * (n + 1)}{OPERATORS[which]}{text} ] )", _OPERATIONS[which](digits)
            k = len(children)
            # The operator arguments take a uniform k-subset of the n positions (partial Fisher-Yates).
            positions = list(range(n))
            for j in range(k):
                r = j + int(uniform() * (n - j))
                positions[j], positions[r] = positions[r], positions[j]
            branch_at = set(positions[:k])
            filled = [operator_node(child) for child in children]
            values = digits + [value for _, value in filled]  # every operator ignores argument order
            parts = ["( " * (n + 1), OPERATORS[which]]
            next_child, next_digit = iter(filled).__next__, iter(digits).__next__
            for i in range(n):
                parts.append(f" {next_child()[0]} )" if i in branch_at else _DIGIT_ARGUMENTS[next_digit()])
            parts.append(" ] )")
            return "".join(parts), _OPERATIONS[which](values)

        return operator_node(shape)


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


def iter_samples(
    seed: int,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
) -> Iterator[tuple[str, int]]:
    """Endless distinct ``(source, value)`` pairs with ``min_length < tokens < max_length``.

    Rejection sampling from the LRA distribution; as in LRA, duplicates are dropped, so no sample is in
    two splits (only a 16-byte digest of each is kept to spot them). Same seed, same samples."""
    _check_generator_args(0, 0, 0, min_length, max_length, max_depth, max_args)
    sampler = ListOpsSampler(seed, max_depth, max_args)
    seen: set[bytes] = set()
    rejected_in_a_row = 0
    while True:
        drawn = sampler.shape(length_limit=max_length)
        if drawn is not None and drawn[1] > min_length:
            source, value = sampler.fill(drawn[0])
            digest = hashlib.blake2b(source.encode(), digest_size=16).digest()
            if digest not in seen:
                seen.add(digest)
                rejected_in_a_row = 0
                yield source, value
                continue
        rejected_in_a_row += 1
        if rejected_in_a_row >= MAX_CONSECUTIVE_REJECTIONS:
            raise ValueError(
                f"ListOps generation stalled after {len(seen)} samples: {MAX_CONSECUTIVE_REJECTIONS} "
                f"candidates in a row were outside min_length={min_length} < tokens < "
                f"max_length={max_length} or duplicates; widen the length window"
            )


def generate_samples(
    n_samples: int,
    seed: int,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
) -> list[tuple[str, int]]:
    """The first ``n_samples`` of ``iter_samples``."""
    _check_generator_args(n_samples, 0, 0, min_length, max_length, max_depth, max_args)
    return list(itertools.islice(iter_samples(seed, min_length, max_length, max_depth, max_args), n_samples))


def write_tsv(path: str | os.PathLike, rows: Iterable[tuple[str, int]]) -> None:
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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = iter_samples(seed, min_length, max_length, max_depth, max_args)
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        write_tsv(out / f"basic_{split}.tsv", itertools.islice(samples, count))
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
                raise ValueError(
                    f"{path}, line {line_number}: Target must be an integer, got {target!r}"
                ) from None
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
                raise FileNotFoundError(
                    f"ListOps data_dir {folder} lacks {', '.join(missing)}. {_HOW_TO_GET}"
                )
            return
        if self._is_complete():
            return
        folder.parent.mkdir(parents=True, exist_ok=True)
        total = sum(self.generator_args[k] for k in ("n_train", "n_val", "n_test"))
        rank_zero_info(f"Generating {total} ListOps samples into {folder} (once; later runs reuse them)")
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
    start, start_cpu = time.perf_counter(), time.process_time()
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
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    total = args.n_train + args.n_val + args.n_test
    print(
        f"wrote {total} samples to {out} in {seconds:.1f} s ({total / seconds:.0f} samples/s; "
        f"CPU time {cpu_seconds:.1f} s, {total / cpu_seconds:.0f} samples/s)"
    )
    majority = None
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
        if split == "train":
            majority = int(np.argmax(share))
        elif majority is not None:
            print(
                f"{split}: always predicting the train majority label {majority} scores {share[majority]:.3f}"
            )
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
