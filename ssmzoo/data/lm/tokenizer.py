"""Tokenizers for language modelling: bytes, or BPE through the ``tokenizers`` library.

Both map a document to token ids *and* to the number of UTF-8 bytes each token covers, so bits per
byte (``ssmzoo.tasks.LanguageModelingTask``) can divide a window's loss by the exact bytes its tokens
stand for, whatever the tokenizer:

- ``ByteTokenizer``: one token per byte (ids 0..255) plus the document separator (id 256);
- ``BPETokenizer``: a ``tokenizers.Tokenizer``, trained here (byte-level BPE, :func:`train_bpe`) or read
  from a ``tokenizer.json``. For a byte-level vocabulary every token covers as many bytes as its string has
  characters (each character of the byte-level alphabet stands for one byte), so the count is exact per
  token; any other tokenizer assigns each character to the first token whose span reaches it (from the
  offsets), exact per document and per token up to where a character split across tokens falls.

The separator (``<|endoftext|>``) starts every document in the token stream and covers 0 bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

EOS = "<|endoftext|>"
# Other spellings of an end-of-text token in tokenizer.json files, tried when EOS is absent.
EOS_CANDIDATES = (EOS, "</s>", "<eos>", "<|end_of_text|>", "<|eos|>")


def utf8_lengths(text: str) -> np.ndarray:
    """Bytes of each character of ``text`` in UTF-8 (1 to 4), int64 (len(text),)."""
    code = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return 1 + (code >= 0x80) + (code >= 0x800) + (code >= 0x10000).astype(np.int64)


def bytes_from_offsets(text: str, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """Bytes covered by each token, given its character span (start, end) in ``text``: each character goes to
    the first token whose span reaches it (characters a tokenizer skipped go to the next token, trailing
    ones to the last), so the counts sum to the document's UTF-8 length."""
    n = len(offsets)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    prefix = np.concatenate([[0], np.cumsum(utf8_lengths(text))])
    ends = np.maximum.accumulate(np.clip(np.asarray([e for _, e in offsets], dtype=np.int64), 0, len(text)))
    ends[-1] = len(text)
    starts = np.concatenate([[0], ends[:-1]])
    return prefix[ends] - prefix[starts]


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0..255, and 256 the document separator. ``vocab_size`` 257."""

    vocab_size = 257
    eos_id = 256
    name = "byte"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def encode_with_bytes(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, bytes per token) of each text."""
        out = []
        for text in texts:
            ids = self.encode(text)
            out.append((ids, np.ones_like(ids)))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


def _byte_level_alphabet() -> set[str]:
    from tokenizers import pre_tokenizers

    return set(pre_tokenizers.ByteLevel.alphabet())


class BPETokenizer:
    """A ``tokenizers.Tokenizer`` with byte counts per token (see the module docstring).

    Args:
        tokenizer: the tokenizer.
        eos_token: its document separator; None: the first of ``EOS_CANDIDATES`` it knows.
        source: where it came from (for messages).
    """

    name = "bpe"

    def __init__(self, tokenizer, eos_token: str | None = None, source: str = "") -> None:
        self.tokenizer, self.source = tokenizer, source
        candidates = (eos_token,) if eos_token is not None else EOS_CANDIDATES
        found = [t for t in candidates if tokenizer.token_to_id(t) is not None]
        if not found:
            where = f" {source}" if source else ""
            raise ValueError(
                f"tokenizer{where} has no end-of-text token (looked for {', '.join(candidates)}); "
                "name its separator with the datamodule's eos_token argument"
            )
        self.eos_token = found[0]
        self.eos_id = int(tokenizer.token_to_id(self.eos_token))
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))

    @classmethod
    def from_file(cls, path: str | Path, eos_token: str | None = None) -> BPETokenizer:
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # the library raises a bare Exception for unreadable files
            raise ValueError(f"tokenizer {path}: not a tokenizers JSON file ({error})") from error
        return cls(tokenizer, eos_token, source=str(path))

    @cached_property
    def _byte_table(self) -> np.ndarray | None:
        """Bytes per token id when the vocabulary is byte level (special tokens: 0), else None."""
        config = json.loads(self.tokenizer.to_str())
        if (config.get("decoder") or {}).get("type") != "ByteLevel":
            return None
        alphabet = _byte_level_alphabet()
        special = {t["id"] for t in config.get("added_tokens", []) if t.get("special")}
        table = np.zeros(self.vocab_size, dtype=np.int64)
        for token, i in self.tokenizer.get_vocab(with_added_tokens=True).items():
            if i in special:
                continue
            if not set(token) <= alphabet:
                return None
            table[i] = len(token)
        return table

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_with_bytes(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, bytes per token) of each text; the texts are encoded as one batch (in parallel)."""
        out = []
        table = self._byte_table
        for text, encoding in zip(texts, self.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            ids = np.asarray(encoding.ids, dtype=np.int64)
            counts = table[ids] if table is not None else None
            if counts is None or int(counts.sum()) != len(text.encode("utf-8")):  # e.g. a normaliser changed it
                counts = bytes_from_offsets(text, encoding.offsets)
            out.append((ids, counts))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: Path) -> None:
        self.tokenizer.save(str(path))


def train_bpe(texts: Iterable[str], vocab_size: int) -> BPETokenizer:
    """A byte-level BPE tokenizer (GPT-2's scheme: every byte is in the vocabulary, so any text encodes)
    trained on ``texts`` with ``vocab_size`` tokens at most (fewer when the texts run out of pairs to merge),
    ``<|endoftext|>`` among them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return BPETokenizer(tokenizer, EOS, source="trained")
