"""Reading a text corpus as a stream of documents, never holding a whole file in memory.

A corpus is one or more paths; a folder stands for every ``.txt`` and ``.jsonl`` file under it (also
gzipped: ``.txt.gz``, ``.jsonl.gz``), in sorted order. Documents are:

- a plain text file: the whole file, or, with ``separator``, the pieces between its occurrences;
- a ``.jsonl`` file: one per line, the string under ``text_field``.

Files are read in blocks of ``BLOCK_CHARS`` characters, cut after a newline where there is one, so a document
larger than memory arrives as several pieces; text is read exactly as stored (no newline translation), so
byte counts are those of the files.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, TextIO

from ..paths import data_root

BLOCK_CHARS = 1 << 20
TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")


class Piece(NamedTuple):
    """Part of a document: ``doc`` counts documents from 0 over the whole corpus, in reading order."""

    doc: int
    text: str


def resolve_path(path: str | Path, owner: str, arg: str, hint: str = "") -> Path:
    """An existing path: as given (relative to the working directory), else relative to the data root
    (``$SSMZOO_DATA``). A ValueError names both places otherwise."""
    given = Path(path).expanduser()
    if given.exists():
        return given.resolve()
    if not given.is_absolute() and (data_root() / given).exists():
        return (data_root() / given).resolve()
    where = str(given.resolve()) if given.is_absolute() else f"{given.resolve()} and {data_root() / given}"
    raise FileNotFoundError(f"{owner}: {arg}={str(path)!r}: looked for {where} and found nothing.{hint}")


def corpus_files(paths: Sequence[Path], owner: str) -> list[Path]:
    """The files of a corpus: each file as given, and each folder's text and jsonl files (recursively)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) is not None
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise ValueError(f"{owner}: the folder {path} holds no {', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)} files")
            files.extend(found)
        else:
            files.append(path)
    return files


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def _open(path: Path) -> TextIO:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _blocks(handle: TextIO, block_chars: int) -> Iterator[str]:
    """The file's text in blocks of about ``block_chars``, each cut after its last newline if it has one."""
    carry = ""
    while True:
        block = handle.read(block_chars)
        if not block:
            if carry:
                yield carry
            return
        block = carry + block
        cut = block.rfind("\n") + 1
        if cut == 0 or cut == len(block):
            carry, out = "", block
        else:
            carry, out = block[cut:], block[:cut]
        yield out


# C0 control characters that text does not hold (tab, newlines, form feed, carriage return and escape aside)
_CONTROL = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
# A block is binary data if it holds a NUL (as git, grep and file judge) or this share of control characters.
BINARY_CONTROL_SHARE = 0.1


def _text_blocks(path: Path, handle: TextIO, block_chars: int) -> Iterator[str]:
    """``_blocks``, refusing binary data: UTF-8 decodes NUL bytes and other control characters without
    complaint, and a tokenizer would take them for text."""
    offset = 0
    for block in _blocks(handle, block_chars):
        nul = block.find("\x00")
        controls = len(_CONTROL.findall(block)) if nul < 0 else 0
        if nul >= 0 or controls > BINARY_CONTROL_SHARE * len(block):
            where = f"a NUL byte at character {offset + nul}" if nul >= 0 else \
                f"{controls} control characters in {len(block)}"
            raise ValueError(f"{path}: holds binary data ({where}), not text; a corpus is UTF-8 text or jsonl")
        offset += len(block)
        yield block


def _text_pieces(path: Path, separator: str | None, first_doc: int, block_chars: int) -> Iterator[Piece]:
    doc = first_doc
    with _open(path) as handle:
        if separator is None:
            for block in _text_blocks(path, handle, block_chars):
                yield Piece(doc, block)
            return
        pending, has_text = "", False  # the current document's text not yet sent; whether some was
        for block in _text_blocks(path, handle, block_chars):
            *complete, pending = (pending + block).split(separator)
            for part in complete:  # each ends a document
                if part:
                    yield Piece(doc, part)
                doc, has_text = (doc + 1, False) if part or has_text else (doc, False)
            # A long document goes out in pieces; the tail that could begin a separator stays.
            if len(pending) > block_chars + len(separator):
                cut = len(pending) - len(separator) + 1
                newline = pending.rfind("\n", 0, cut) + 1
                cut = newline or cut
                yield Piece(doc, pending[:cut])
                pending, has_text = pending[cut:], True
        if pending:
            yield Piece(doc, pending)


def _jsonl_pieces(path: Path, text_field: str, first_doc: int) -> Iterator[Piece]:
    doc = first_doc
    with _open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error.msg})") from error
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise ValueError(f"{path}:{number}: no string under text_field={text_field!r} "
                                 f"(keys: {', '.join(record) if isinstance(record, dict) else type(record).__name__})")
            if text:
                yield Piece(doc, text)
                doc += 1


def documents(files: Sequence[Path], text_field: str = "text", separator: str | None = None,
              block_chars: int | None = None) -> Iterator[Piece]:
    """Every non-empty document of ``files`` as pieces, in order; a document's pieces are consecutive and
    joined give its text. ``block_chars`` defaults to ``BLOCK_CHARS`` (read when called)."""
    block_chars = BLOCK_CHARS if block_chars is None else block_chars
    next_doc = 0
    for path in files:
        last = next_doc - 1
        try:
            if _kind(path) == "jsonl":
                pieces = _jsonl_pieces(path, text_field, next_doc)
            else:
                pieces = _text_pieces(path, separator, next_doc, block_chars)
            for piece in pieces:
                last = piece.doc
                yield piece
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start} of a block)") from error
        except gzip.BadGzipFile as error:
            if str(error).startswith("Not a gzipped file"):
                raise ValueError(f"{path}: is not gzip-compressed, though its name ends in .gz; rename it or "
                                 "compress it") from error
            raise ValueError(f"{path}: truncated or damaged gzip file ({error})") from error
        except (EOFError, zlib.error) as error:
            raise ValueError(f"{path}: truncated or damaged gzip file ({type(error).__name__}: {error})") from error
        next_doc = last + 1
