"""A tokenized corpus on disk, split by document, and the fixed-length windows cut from it.

``build_token_cache`` streams the corpus once to count its documents, assigns whole documents to train /
val / test (a seeded permutation), trains a BPE tokenizer on the training documents if asked, then streams
the corpus again, writing per split:

    tokens.bin  the token ids, each document preceded by the separator (uint16, or uint32 for > 65,536 ids)
    bytes.bin   the UTF-8 bytes each token covers (uint16; the separator covers 0)
    starts.bin  the position of each document's separator (int64)

and ``meta.json`` (sizes, dtypes, the tokenizer) last, into a folder that appears whole (built under a
temporary name, then renamed), so a killed build never leaves a half-written cache behind. A cache damaged
later (a truncated file, a lost ``meta.json``) is found by its sizes and rebuilt.

``WindowDataset`` cuts a split into consecutive windows of ``seq_len + 1`` tokens, one token of overlap:
window i has input tokens [i·L, (i+1)·L) and targets [i·L + 1, (i+1)·L + 1), so every token of the split
after the first is a target exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from torch.utils.data import Dataset

from ...files import building_folder, remove_stale_building, writer_tag
from .corpus import documents
from .tokenizer import BPETokenizer, ByteTokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CACHE_VERSION = 1
# Pieces encoded per batch (the tokenizers library encodes a batch in parallel).
ENCODE_BATCH_CHARS = 1 << 22


def split_documents(n_docs: int, val_split: float | int, test_split: float | int, seed: int, owner: str) -> np.ndarray:
    """Split of each document: 0 train, 1 val, 2 test (uint8, (n_docs,)), by a permutation seeded with ``seed``.

    A float split is a fraction of the documents (rounded, at least one when > 0), an int a count."""
    sizes = [value if isinstance(value, int) else max(1, round(value * n_docs)) if value > 0 else 0
             for value in (val_split, test_split)]
    if n_docs - sum(sizes) < 1:
        raise ValueError(
            f"{owner}: the corpus holds {n_docs} document(s); val_split={val_split!r} and test_split={test_split!r} "
            f"take {sizes[0]} and {sizes[1]}, leaving none to train on. Splits are by document (a plain text file is "
            "one document unless separator= cuts it; a jsonl line is one): give more documents or smaller splits"
        )
    order = np.random.default_rng(seed).permutation(n_docs)
    assignment = np.zeros(n_docs, dtype=np.uint8)
    assignment[order[: sizes[0]]] = 1
    assignment[order[sizes[0] : sizes[0] + sizes[1]]] = 2
    return assignment


@dataclass
class TokenSplit:
    """One split: tokens and bytes per token (memory-mapped), and where each document starts."""

    tokens: np.ndarray
    byte_counts: np.ndarray
    starts: np.ndarray
    folder: Path | None = None
    name: str = ""

    @property
    def num_bytes(self) -> int:
        return int(self.byte_counts.sum(dtype=np.int64))

    def __getstate__(self) -> dict:
        # A memory map pickles as a copy of its data: DataLoader workers started by spawn get the paths instead.
        if self.folder is None:
            return self.__dict__
        return {"folder": self.folder, "name": self.name}

    def __setstate__(self, state: dict) -> None:
        if "tokens" in state:
            self.__dict__.update(state)
        else:
            self.__dict__.update(load_split(state["folder"], state["name"]).__dict__)


def _batches(pieces, chars: int):
    """Consecutive pieces grouped into lists of about ``chars`` characters."""
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece.text)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def build_token_cache(
    folder: Path,
    files: Sequence[Path],
    text_field: str,
    separator: str | None,
    val_split: float | int,
    test_split: float | int,
    seed: int,
    make_tokenizer: Callable[[Callable[[], object]], ByteTokenizer | BPETokenizer],
    owner: str,
) -> None:
    """Tokenize ``files`` into ``folder`` (see the module docstring); nothing to do if it is there.

    ``make_tokenizer(training_texts)`` returns the tokenizer; ``training_texts()`` iterates over the text of
    the training documents (for training a BPE tokenizer on them).

    A cache that is there but damaged (:func:`cache_problem`) is built again and replaces it; the building
    folders of killed builds are removed (only those of processes gone, on this machine)."""
    remove_stale_building(folder)
    problem = cache_problem(folder) if folder.exists() else "absent"
    if problem is None:
        return
    if problem != "absent":
        log.warning("%s: the token cache %s is damaged (%s); it is rebuilt", owner, folder, problem)

    def stream() -> object:
        return documents(files, text_field, separator)

    n_docs = 0
    for piece in stream():
        n_docs = piece.doc + 1
    if n_docs == 0:
        raise ValueError(f"{owner}: the corpus ({', '.join(map(str, files[:3]))}{', ...' if len(files) > 3 else ''}) "
                         "holds no text")
    assignment = split_documents(n_docs, val_split, test_split, seed, owner)
    tokenizer = make_tokenizer(lambda: (p.text for p in stream() if assignment[p.doc] == 0))
    token_dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32

    building = building_folder(folder)
    shutil.rmtree(building, ignore_errors=True)  # this process's own, from an earlier failed attempt
    building.mkdir(parents=True)
    handles = {(s, kind): open(building / f"{s}.{kind}.bin", "wb") for s in SPLITS for kind in ("tokens", "bytes", "starts")}
    counts = {s: {"tokens": 0, "bytes": 0, "documents": 0} for s in SPLITS}
    try:
        last_doc = -1
        for batch in _batches(stream(), ENCODE_BATCH_CHARS):
            for piece, (ids, nbytes) in zip(batch, tokenizer.encode_with_bytes([p.text for p in batch])):
                split = SPLITS[assignment[piece.doc]]
                c = counts[split]
                if piece.doc != last_doc:  # a new document: its separator first
                    np.asarray([c["tokens"]], dtype=np.int64).tofile(handles[split, "starts"])
                    ids = np.concatenate([[tokenizer.eos_id], ids])
                    nbytes = np.concatenate([[0], nbytes])
                    c["documents"] += 1
                    last_doc = piece.doc
                if nbytes.size and nbytes.max() >= 1 << 16:
                    raise ValueError(f"{owner}: a token covers {int(nbytes.max())} bytes (more than 65,535); "
                                     "is the tokenizer dropping text?")
                ids.astype(token_dtype).tofile(handles[split, "tokens"])
                nbytes.astype(np.uint16).tofile(handles[split, "bytes"])
                c["tokens"] += len(ids)
                c["bytes"] += int(nbytes.sum())
    finally:
        for handle in handles.values():
            handle.close()
    if isinstance(tokenizer, BPETokenizer):
        tokenizer.save(building / "tokenizer.json")
    meta = {
        "version": CACHE_VERSION,
        "token_dtype": np.dtype(token_dtype).name,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "tokenizer": tokenizer.name,
        "eos_token": getattr(tokenizer, "eos_token", None),
        "splits": counts,
        "files": [str(f) for f in files],
    }
    (building / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    _replace_folder(building, folder)


def _replace_folder(building: Path, folder: Path) -> None:
    """Put the finished ``building`` at ``folder``, moving a damaged cache there out of the way first; if another
    process put a complete cache there meanwhile, keep that one."""
    if folder.exists() and cache_problem(folder) is not None:
        damaged = folder.with_name(f"{folder.name}.damaged-{writer_tag()}")
        try:
            os.rename(folder, damaged)
        except OSError:  # another process moved it first
            pass
        else:
            shutil.rmtree(damaged, ignore_errors=True)  # a cache we wrote, found damaged
    try:
        os.rename(building, folder)
    except OSError:  # another process built it first
        shutil.rmtree(building, ignore_errors=True)
        problem = cache_problem(folder)
        if problem is not None:
            raise ValueError(f"the token cache {folder} could not be replaced ({problem}); delete it and run "
                             "again") from None


def _read_meta(folder: Path) -> dict:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError(f"meta.json holds a JSON {type(meta).__name__}, not an object")
    return meta


def cache_problem(folder: Path) -> str | None:
    """What is wrong with the token cache ``folder`` (a missing or unreadable ``meta.json``, a file missing or of
    the wrong size), or None if it is complete. Reads only ``meta.json`` and the files' sizes."""
    try:
        meta = _read_meta(folder)
    except FileNotFoundError:
        return "no meta.json"
    except (ValueError, UnicodeDecodeError) as error:
        return f"meta.json is unreadable: {error}"
    try:
        if meta["version"] != CACHE_VERSION:
            return f"meta.json has version {meta['version']!r}, not {CACHE_VERSION}"
        itemsize = np.dtype(meta["token_dtype"]).itemsize
        for split in SPLITS:
            counts = meta["splits"][split]
            sizes = {"tokens": counts["tokens"] * itemsize, "bytes": counts["tokens"] * 2,
                     "starts": counts["documents"] * 8}
            for kind, size in sizes.items():
                path = folder / f"{split}.{kind}.bin"
                if not path.is_file():
                    return f"{path.name} is missing"
                if path.stat().st_size != size:
                    return f"{path.name} has {path.stat().st_size} bytes, meta.json says {size}"
        if meta["tokenizer"] != ByteTokenizer.name and not (folder / "tokenizer.json").is_file():
            return "tokenizer.json is missing"
    except (KeyError, TypeError, ValueError) as error:
        return f"meta.json lacks what a cache records ({type(error).__name__}: {error})"
    return None


def load_split(folder: Path, split: str) -> TokenSplit:
    try:
        meta = _read_meta(folder)
        n = meta["splits"][split]["tokens"]
        if n == 0:
            return TokenSplit(np.zeros(0, np.int64), np.zeros(0, np.uint16), np.zeros(0, np.int64))
        tokens = np.memmap(folder / f"{split}.tokens.bin", dtype=meta["token_dtype"], mode="r", shape=(n,))
        byte_counts = np.memmap(folder / f"{split}.bytes.bin", dtype=np.uint16, mode="r", shape=(n,))
        starts = np.fromfile(folder / f"{split}.starts.bin", dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError) as error:  # damaged since it was checked
        raise ValueError(f"the token cache {folder} is damaged ({type(error).__name__}: {error}); the next "
                         "prepare_data rebuilds it") from error
    return TokenSplit(tokens, byte_counts, starts, folder, split)


class WindowDataset(Dataset):
    """Windows of a split (see the module docstring). Item i: ``input_ids``, ``targets`` (seq_len,) int64,
    ``num_bytes`` () int64, the UTF-8 bytes the targets cover, and ``seq_idx`` (seq_len,) int32, which document
    of the window each input token belongs to (0, 1, ...: a separator belongs to the document it begins)."""

    def __init__(self, split: TokenSplit, seq_len: int) -> None:
        self.split, self.seq_len = split, seq_len
        self.length = max(0, (len(split.tokens) - 1) // seq_len)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"window {index} of {self.length}")
        start, end = index * self.seq_len, (index + 1) * self.seq_len + 1
        ids = torch.from_numpy(np.asarray(self.split.tokens[start:end], dtype=np.int64))
        num_bytes = int(self.split.byte_counts[start + 1 : end].sum(dtype=np.int64))
        docs = np.searchsorted(self.split.starts, np.arange(start, end - 1), side="right") - 1
        return {
            "input_ids": ids[:-1],
            "targets": ids[1:],
            "num_bytes": torch.tensor(num_bytes, dtype=torch.int64),
            "seq_idx": torch.from_numpy((docs - docs[0]).astype(np.int32)),
        }


def cu_seqlens(seq_idx: Tensor) -> Tensor:
    """Boundaries of the documents in the batch flattened to one row: int32 (segments + 1,), from 0 to
    batch·length, a segment starting at every row start and wherever ``seq_idx`` (batch, length) changes."""
    batch, length = seq_idx.shape
    starts = torch.ones_like(seq_idx, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    flat = torch.nonzero(rearrange(starts, "b l -> (b l)")).flatten()
    return torch.cat([flat, flat.new_tensor([batch * length])]).to(torch.int32)


def collate_windows(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack windows into a batch and add ``cu_seqlens`` (see :func:`cu_seqlens`)."""
    batch = {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
    batch["cu_seqlens"] = cu_seqlens(batch["seq_idx"])
    return batch

