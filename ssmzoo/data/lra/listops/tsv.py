"""The official ListOps file format and its tokenisation.

``listops-1000/basic_{train,val,test}.tsv``: a header ``Source<TAB>Target``, then one row per sample.
``Source`` is the LRA generator's textual form of the tree, which writes an operator with its arguments as
left-nested pairs in parentheses: ``[MAX 2 9 ]`` is ``( ( ( [MAX 2 ) 9 ) ] )``. ``Target`` is the value.

Tokens follow the S4 repository: parentheses dropped; PAD = 0, digits 0-9 = 1-10, ``[MIN`` 11, ``[MAX`` 12,
``[MED`` 13, ``[SM`` 14, ``]`` 15 (vocabulary 16).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

END = "]"
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
HOW_TO_GET = (
    "Write generated files with `ssmzoo data listops --out DIR` (or leave data_dir unset to generate and cache "
    "them), or take listops-1000/ from the official LRA release (lra_release.gz, "
    "https://github.com/google-research/long-range-arena)."
)
_STRIP_PARENTHESES = str.maketrans("", "", "()")


def write_tsv(path: str | os.PathLike, rows: Iterable[tuple[str, int]]) -> None:
    """Write rows in the official format: header ``Source<TAB>Target``, CRLF line ends (Python's csv
    writer, which LRA used)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        f.write("Source\tTarget\r\n")
        f.writelines(f"{source}\t{target}\r\n" for source, target in rows)


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

    def __getitem__(self, index: int) -> np.ndarray:
        """The token ids of sample ``index``."""
        return self.tokens[self.offsets[index] : self.offsets[index + 1]]

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
        raise FileNotFoundError(f"ListOps file not found: {path}. {HOW_TO_GET}")
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
