"""Passkey retrieval (Mohtashami & Jaggi 2023; the long-context test of RAMba and HSA-UltraLong) with a
synthetic vocabulary, at any length: a passkey of ``n_digits`` digits is hidden at a random depth in a
haystack of filler tokens, and the sequence ends by asking for it.

    tokens   0-9 digits, 10 KEY ("the pass key is"), 11 QUERY ("what is the pass key?"),
             12 .. 12 + filler_vocab − 1 filler
    example  [filler × a]  KEY d1 … dn  [filler × b]  QUERY d1 … dn          (length seq_len)
    targets  −100 everywhere but at QUERY, d1, …, d(n−1), whose next tokens are d1, …, dn

The depth a is uniform over every place the needle fits. Each example is generated from its own seed
(split seed and index), so a data set of any length and size costs no memory until it is read, and the
long-context benchmark draws its 64K-token examples from the same function as training.
"""

from __future__ import annotations

import hashlib

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..loader import ResumableDataLoader, check_loader_args, eval_loader

N_DIGITS = 10
KEY, QUERY = 10, 11
FILLER = 12  # the first filler token
IGNORE_INDEX = -100


def passkey_vocab_size(filler_vocab: int) -> int:
    return FILLER + filler_vocab


def passkey_example(seq_len: int, n_digits: int, filler_vocab: int, generator: torch.Generator,
                    depth: float | None = None) -> tuple[Tensor, Tensor]:
    """One example: (tokens, targets), LongTensors (seq_len,). ``depth`` in [0, 1] places the needle at
    that fraction of the haystack (None: uniform)."""
    if n_digits < 1 or filler_vocab < 1:
        raise ValueError(f"passkey: n_digits and filler_vocab must be >= 1, got {n_digits}, {filler_vocab}")
    haystack = seq_len - 2 * (n_digits + 1)
    if haystack < 0:
        raise ValueError(f"passkey: seq_len={seq_len} is too short for a needle and a question of "
                         f"{n_digits} digits (need >= {2 * (n_digits + 1)})")
    digits = torch.randint(0, N_DIGITS, (n_digits,), generator=generator)
    tokens = FILLER + torch.randint(0, filler_vocab, (seq_len,), generator=generator)
    if depth is None:
        at = int(torch.randint(0, haystack + 1, (1,), generator=generator))
    else:
        at = round(depth * haystack)
    tokens[at] = KEY
    tokens[at + 1: at + 1 + n_digits] = digits
    q = seq_len - n_digits - 1
    tokens[q] = QUERY
    tokens[q + 1:] = digits
    targets = torch.full((seq_len,), IGNORE_INDEX)
    targets[q: q + n_digits] = digits
    return tokens, targets


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "little") >> 1


class PasskeyDataset(Dataset):
    """``size`` passkey examples of ``seq_len`` tokens; example i comes from the seed (seed, i). Items are
    dicts {input_ids, targets} (seq_len,)."""

    def __init__(self, size: int, seq_len: int, n_digits: int, filler_vocab: int, seed: int) -> None:
        self.size, self.seq_len, self.n_digits, self.filler_vocab, self.seed = size, seq_len, n_digits, filler_vocab, seed
        passkey_example(seq_len, n_digits, filler_vocab, torch.Generator())  # validates the arguments now

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not 0 <= i < self.size:
            raise IndexError(f"PasskeyDataset: index {i} out of range for {self.size} examples")
        g = torch.Generator().manual_seed(_seed("passkey", self.seed, i))
        tokens, targets = passkey_example(self.seq_len, self.n_digits, self.filler_vocab, g)
        return {"input_ids": tokens, "targets": targets}


class PasskeyDataModule(L.LightningDataModule):
    """Passkey retrieval, trained at ``seq_len`` tokens and validated and tested at ``test_seq_len``
    (default the same). Batches are dicts: input_ids (batch, length), targets (batch, length) with −100
    where nothing is asked.

    Args:
        seq_len: tokens per training example.
        n_digits: digits of the passkey.
        filler_vocab: distinct filler tokens.
        test_seq_len: tokens per validation and test example (None: seq_len).
        num_train, num_val, num_test: examples per split.
        batch_size, num_workers: of every loader.
        seed: the data's seed; each split derives its own.

    ``vocab_size`` (12 + filler_vocab) is linked into the model by the ``ssmzoo`` command.
    """

    def __init__(
        self,
        seq_len: int = 512,
        n_digits: int = 4,
        filler_vocab: int = 16,
        test_seq_len: int | None = None,
        num_train: int = 20000,
        num_val: int = 200,
        num_test: int = 500,
        batch_size: int = 16,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        owner = "PasskeyDataModule"
        for arg, value in (("seq_len", seq_len), ("n_digits", n_digits), ("filler_vocab", filler_vocab),
                           ("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{owner}: {arg} must be a positive int, got {value!r}")
        if test_seq_len is not None and (not isinstance(test_seq_len, int) or isinstance(test_seq_len, bool)
                                         or test_seq_len < 1):
            raise ValueError(f"{owner}: test_seq_len must be None or a positive int, got {test_seq_len!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"{owner}: seed must be an int, got {seed!r}")
        check_loader_args(owner, batch_size, num_workers)
        self.seq_len, self.n_digits, self.filler_vocab = seq_len, n_digits, filler_vocab
        self.test_seq_len = seq_len if test_seq_len is None else test_seq_len
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        for split in self.sizes:
            try:
                self.dataset(split)
            except ValueError as e:
                raise ValueError(f"{owner}: {e}") from e

    @property
    def vocab_size(self) -> int:
        return passkey_vocab_size(self.filler_vocab)

    def dataset(self, split: str) -> PasskeyDataset:
        if split not in self.sizes:
            raise ValueError(f"PasskeyDataModule: split must be one of {', '.join(self.sizes)}, got {split!r}")
        length = self.seq_len if split == "train" else self.test_seq_len
        return PasskeyDataset(self.sizes[split], length, self.n_digits, self.filler_vocab, _seed(self.seed, split))

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(self.dataset("train"), self.batch_size, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.dataset("val"), self.batch_size, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return eval_loader(self.dataset("test"), self.batch_size, self.num_workers)
