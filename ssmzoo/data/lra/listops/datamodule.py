"""ListOpsDataModule: the official files from a folder, or generated ones cached by their arguments."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from ...paths import data_root
from ..common import SPLITS, ClassificationDataModule
from . import generator
from .generator import GENERATOR_VERSION, check_generator_args
from .tsv import HOW_TO_GET, NUM_CLASSES, VOCAB_SIZE, ListOpsSplit, read_listops_tsv


class ListOpsDataModule(ClassificationDataModule):
    """LRA ListOps: 10 classes, vocabulary 16 (PAD = 0), sequences up to 2,000 tokens; batches
    ``(tokens, lengths, labels)``.

    Args:
        data_dir: a folder holding the official ``basic_{train,val,test}.tsv``; when None, data is
            generated (with the arguments below) and cached under
            ``$SSMZOO_DATA/lra/listops/<hash of the generator's version and arguments>/``.
        n_train, n_val, n_test, min_length, max_length, max_depth, max_args, seed: generator settings
            (LRA's by default); ignored when ``data_dir`` is given.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        max_tokens: longer sequences are cut to their first ``max_tokens`` tokens (with a warning).
        pin_memory: DataLoader pin_memory.
        shuffle: a new training order every epoch (seeded by the run seed and the epoch).
    """

    num_classes = NUM_CLASSES
    vocab_size = VOCAB_SIZE
    d_input = 0

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
        super().__init__(batch_size, num_workers, seed, pin_memory, shuffle)
        if data_dir is None:
            check_generator_args(n_train, n_val, n_test, min_length, max_length, max_depth, max_args)
            for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
                if value < 1:
                    raise ValueError(f"ListOpsDataModule: {name} must be >= 1, got {value}")
        elif not isinstance(data_dir, (str, os.PathLike)):
            raise ValueError(f"ListOpsDataModule: data_dir must be a path or None, got {data_dir!r}")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ValueError(f"ListOpsDataModule: max_tokens must be an int >= 1, got {max_tokens!r}")
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
        self.max_tokens = max_tokens

    @property
    def generated(self) -> str | None:
        """What the data is, for results tables, when it is generated (None for the official files)."""
        if self.data_dir is not None:
            return None
        a = self.generator_args
        return (f"generated ListOps (ssmzoo's seeded generator: {a['n_train']} / {a['n_val']} / {a['n_test']}, "
                f"{a['min_length']} < tokens < {a['max_length']}, depth <= {a['max_depth']}, <= {a['max_args']} "
                f"args, seed {a['seed']}; not the LRA release)")

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
                raise FileNotFoundError(
                    f"ListOps data_dir not found: {folder} (set by {self.data_flag}). {HOW_TO_GET}"
                )
            missing = [f"basic_{s}.tsv" for s in SPLITS if not (folder / f"basic_{s}.tsv").is_file()]
            if missing:
                raise FileNotFoundError(
                    f"ListOps data_dir {folder} (set by {self.data_flag}) lacks {', '.join(missing)}. {HOW_TO_GET}"
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
            generator.generate_listops(staging, **self.generator_args)
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

    def _source(self, split: str) -> str:
        return str(self.split_dir / f"basic_{split}.tsv")

    def _load(self, split: str) -> tuple[ListOpsSplit, np.ndarray]:
        if self.data_dir is not None or not self._is_complete():
            self.prepare_data()  # checks the official files, or generates the missing cache
        data = read_listops_tsv(self._source(split), self.max_tokens)
        return data, data.labels
