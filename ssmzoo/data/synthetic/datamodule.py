"""LightningDataModules for the synthetic tasks: seeded, generated on demand, any model.

Every sample is generated from its own seed (the datamodule's seed, the split and its index), so splits may
be as large as training wants (fresh data every step, as the papers train) without being held in memory, and
a resumed run sees the same samples. Batches are dicts ``{"input_ids", "targets"}``, both LongTensor
(batch, length); targets hold the token expected at each position or ``ignore_index`` (-100) where nothing is
asked (the convention of ``F.cross_entropy`` and of :class:`ssmzoo.tasks.RecallTask`)."""

from __future__ import annotations

import hashlib
from abc import abstractmethod

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..loader import ResumableDataLoader, check_loader_args, eval_loader
from .induction_heads import induction_heads
from .mqar import mqar
from .needle import needles
from .selective_copying import selective_copying

_SPLITS = {"train": 0, "val": 1, "test": 2}


def sample_seed(seed: int, split: str, index: int) -> int:
    """A 63-bit seed for one sample of one split."""
    digest = hashlib.blake2b(f"ssmzoo-synthetic:{seed}:{split}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class GeneratedDataset(Dataset):
    """``size`` samples, sample i made by ``make(generator)`` with a generator seeded by (seed, split, i)."""

    def __init__(self, module: _SyntheticDataModule, split: str, size: int) -> None:
        self.module, self.split, self.size = module, split, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(f"sample {index} of {self.size}")
        generator = torch.Generator().manual_seed(sample_seed(self.module.seed, self.split, index))
        tokens, targets = self.module._generate(self.split, 1, generator)
        return {"input_ids": tokens[0], "targets": targets[0]}


class _SyntheticDataModule(L.LightningDataModule):
    ignore_index = -100

    def __init__(self, num_train: int, num_val: int, num_test: int, batch_size: int, seed: int, num_workers: int):
        super().__init__()
        for arg, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{type(self).__name__}: {arg} must be a positive int, got {value!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"{type(self).__name__}: seed must be an int, got {seed!r}")
        check_loader_args(type(self).__name__, batch_size, num_workers)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers

    @abstractmethod
    def _generate(self, split: str, num_samples: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(tokens, targets) of ``num_samples`` samples of ``split``."""

    def dataset(self, split: str) -> GeneratedDataset:
        """The split's samples, each generated when read."""
        if split not in _SPLITS:
            raise ValueError(f"{type(self).__name__}: split must be one of {', '.join(_SPLITS)}, got {split!r}")
        return GeneratedDataset(self, split, self.sizes[split])

    def train_dataloader(self) -> DataLoader:
        # order set by the run seed and the epoch, resumable mid-epoch (see ssmzoo.data.loader)
        return ResumableDataLoader(self.dataset("train"), self.batch_size, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.dataset("val"), self.batch_size, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return eval_loader(self.dataset("test"), self.batch_size, self.num_workers)


class SelectiveCopyingDataModule(_SyntheticDataModule):
    """Selective copying (see selective_copying.py): ``num_tokens`` data tokens among ``seq_len``
    positions, then ``num_tokens`` markers; examples are ``seq_len + num_tokens`` long."""

    def __init__(
        self,
        seq_len: int = 256,
        num_tokens: int = 16,
        vocab_size: int = 16,
        num_train: int = 10000,
        num_val: int = 500,
        num_test: int = 500,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(num_train, num_val, num_test, batch_size, seed, num_workers)
        self.seq_len, self.num_tokens, self.vocab_size = seq_len, num_tokens, vocab_size
        selective_copying(1, seq_len, num_tokens, vocab_size, torch.Generator())  # validate arguments now

    def _generate(self, split: str, num_samples: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return selective_copying(num_samples, self.seq_len, self.num_tokens, self.vocab_size, generator)


class InductionHeadsDataModule(_SyntheticDataModule):
    """Induction heads (see induction_heads.py), trained at ``seq_len`` and tested at
    ``test_seq_len`` (default the same) to measure length extrapolation as in the Mamba paper."""

    def __init__(
        self,
        seq_len: int = 256,
        vocab_size: int = 16,
        test_seq_len: int | None = None,
        num_train: int = 10000,
        num_val: int = 500,
        num_test: int = 500,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(num_train, num_val, num_test, batch_size, seed, num_workers)
        self.seq_len, self.vocab_size = seq_len, vocab_size
        self.test_seq_len = test_seq_len if test_seq_len is not None else seq_len
        for length in {seq_len, self.test_seq_len}:
            induction_heads(1, length, vocab_size, torch.Generator())  # validate arguments now

    def _generate(self, split: str, num_samples: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        length = self.test_seq_len if split == "test" else self.seq_len
        return induction_heads(num_samples, length, self.vocab_size, generator)


class NeedleDataModule(_SyntheticDataModule):
    """Key-value needles (see needle.py; the Titans paper's passkey test): ``pairs`` key→value needles in a
    haystack of filler tokens, then
    every key asked again. Trained and validated at ``seq_len``, tested at ``test_seq_len`` (default the same),
    so a model trained short can be tested on haystacks longer than its attention span.

    ``vocab_size`` is ``num_filler + num_keys + num_values``."""

    def __init__(
        self,
        seq_len: int = 64,
        test_seq_len: int | None = None,
        pairs: int = 1,
        num_filler: int = 16,
        num_keys: int = 16,
        num_values: int = 16,
        num_train: int = 48000,
        num_val: int = 256,
        num_test: int = 256,
        batch_size: int = 16,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(num_train, num_val, num_test, batch_size, seed, num_workers)
        self.seq_len, self.pairs = seq_len, pairs
        self.test_seq_len = test_seq_len if test_seq_len is not None else seq_len
        self.num_filler, self.num_keys, self.num_values = num_filler, num_keys, num_values
        for length in {seq_len, self.test_seq_len}:
            needles(1, length, pairs, num_filler, num_keys, num_values, torch.Generator())  # validate arguments now
        self.vocab_size = num_filler + num_keys + num_values

    def _generate(self, split: str, num_samples: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        length = self.test_seq_len if split == "test" else self.seq_len
        return needles(num_samples, length, self.pairs, self.num_filler, self.num_keys, self.num_values, generator)


class MQARDataModule(_SyntheticDataModule):
    """Multi-query associative recall (see mqar.py; the Zoology paper's MQAR): ``num_kv_pairs`` key-value pairs,
    then every key asked once more in a query region; ``seq_len`` tokens, vocabulary ``vocab_size``. Trained and
    validated at ``num_kv_pairs``, tested at ``test_num_kv_pairs`` (default the same) and ``test_seq_len``
    (default the same), so a model trained on few pairs can be tested on more."""

    def __init__(
        self,
        seq_len: int = 128,
        num_kv_pairs: int = 8,
        vocab_size: int = 1024,
        power_a: float = 0.01,
        random_non_queries: bool = True,
        test_seq_len: int | None = None,
        test_num_kv_pairs: int | None = None,
        num_train: int = 100000,
        num_val: int = 500,
        num_test: int = 1000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(num_train, num_val, num_test, batch_size, seed, num_workers)
        if not isinstance(random_non_queries, bool):
            raise ValueError(f"MQARDataModule: random_non_queries must be True or False, got {random_non_queries!r}")
        self.seq_len, self.num_kv_pairs, self.vocab_size = seq_len, num_kv_pairs, vocab_size
        self.power_a, self.random_non_queries = power_a, random_non_queries
        self.test_seq_len = test_seq_len if test_seq_len is not None else seq_len
        self.test_num_kv_pairs = test_num_kv_pairs if test_num_kv_pairs is not None else num_kv_pairs
        for length, pairs in {(seq_len, num_kv_pairs), (self.test_seq_len, self.test_num_kv_pairs)}:
            mqar(1, length, pairs, vocab_size, torch.Generator(), power_a, random_non_queries)  # validate now

    def _generate(self, split: str, num_samples: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        length, pairs = ((self.test_seq_len, self.test_num_kv_pairs) if split == "test"
                         else (self.seq_len, self.num_kv_pairs))
        return mqar(num_samples, length, pairs, self.vocab_size, generator, self.power_a, self.random_non_queries)
