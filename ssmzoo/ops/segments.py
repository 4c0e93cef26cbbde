"""Packed documents: where documents begin and end in a (batch, length) input.

Language models train on windows packed with several documents; a layer must then compute every
document as if it ran alone (no state, convolution tap, attention or memory reaches from one
document into the next). :class:`Segments` describes the documents of one batch, validated once
when it is built, and every layer's ``forward(x, segments=...)`` honours it.

Documents are numbered row by row, left to right (row 0's first document is 0); a document never
runs from one row into the next, and every row starts a document. Per-document states (initial
states in, final states out) are stacked in this order: their leading size is ``num_docs``.

Three ways to say the same thing (flash-attn's, mamba-ssm's and a plain one):
- ``Segments.from_seq_idx(seq_idx)``: (batch, length) integer ids, non-decreasing along each row; a
  run of one id is a document (``ssmzoo.data.lm``'s windows carry these);
- ``Segments.from_cu_seqlens(cu_seqlens, batch, length)``: (num_docs + 1,) boundaries over the batch
  flattened to one row, from 0 to batch · length, with a boundary at every row start;
- ``Segments.from_lengths(lengths, length)``: each row's document lengths, summing to ``length``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import torch
from einops import rearrange
from torch import Tensor


class Span(NamedTuple):
    """One document: tokens ``start .. stop - 1`` of row ``row``."""

    row: int
    start: int
    stop: int


def _integer_tensor(arg: str, t: object, rank: int, doc: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"Segments: {arg} must be an integer tensor {doc}, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"Segments: {arg} must be an integer tensor {doc}, got dtype {t.dtype}")
    if t.dim() != rank:
        raise ValueError(f"Segments: {arg} must have shape {doc}, got {tuple(t.shape)}")
    if t.is_meta:
        raise ValueError(f"Segments: {arg} is on the meta device; segments need its values")
    return t


class cached_property:  # noqa: N801 (functools' name): functools' takes a lock in Python 3.11, which torch.compile cannot trace
    """A value computed on first access and kept on the instance (like functools.cached_property, no lock)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn, self.__doc__ = fn, fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, cls: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


class Segments:
    """The documents of a packed (batch, length) input; build it with one of the ``from_*`` constructors.

    Attributes:
        batch, length: the input's (batch, length).
        spans: one :class:`Span` per document, in document order.
        num_docs: the number of documents.
        starts: (batch, length) bool, True at every document's first token (always at a row's first).
        doc: (batch, length) int64, every token's document number (0 .. num_docs - 1).
    """

    def __init__(self, starts: Tensor) -> None:
        """From a (batch, length) bool tensor, True at each document's first token; the ``from_*``
        constructors are the usual way in."""
        if not isinstance(starts, Tensor) or starts.dtype != torch.bool or starts.dim() != 2 or 0 in starts.shape:
            got = f"{starts.dtype} {tuple(starts.shape)}" if isinstance(starts, Tensor) else type(starts).__name__
            raise ValueError(f"Segments: starts must be a (batch, length) bool tensor, got {got}")
        if starts.is_meta or not bool(starts[:, 0].all()):
            raise ValueError("Segments: starts must be True at every row's first token (every row starts a document)")
        self.starts = starts
        self.batch, self.length = starts.shape
        self.doc = rearrange(starts, "b l -> (b l)").long().cumsum(0).reshape(self.batch, self.length) - 1
        cuts = starts.nonzero().tolist()  # (row, t) of every start, row-major: the document order
        self.spans = [Span(row, t, self.length) for row, t in cuts]
        for k in range(len(self.spans) - 1):
            if self.spans[k + 1].row == self.spans[k].row:
                self.spans[k] = self.spans[k]._replace(stop=self.spans[k + 1].start)
        self.num_docs = len(self.spans)
        self.unpacked = self.num_docs == self.batch  # every row is one document (the segments change nothing)

    # -- constructors ------------------------------------------------------------------------------
    @classmethod
    def from_seq_idx(cls, seq_idx: Tensor) -> Segments:
        """``seq_idx`` (batch, length): integer ids, non-decreasing along each row; a run of one id is a document."""
        seq_idx = _integer_tensor("seq_idx", seq_idx, 2, "(batch, length)")
        if 0 in seq_idx.shape:
            raise ValueError(f"Segments: seq_idx must have batch and length >= 1, got {tuple(seq_idx.shape)}")
        if bool((seq_idx[:, 1:] < seq_idx[:, :-1]).any()):
            raise ValueError("Segments: seq_idx must be non-decreasing along each row (a document is a run of one id)")
        starts = torch.ones_like(seq_idx, dtype=torch.bool)
        starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
        return cls(starts)

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens: Tensor, batch: int, length: int) -> Segments:
        """``cu_seqlens`` (num_docs + 1,): boundaries over the batch flattened to one row (flash-attn's
        convention), strictly increasing from 0 to batch · length, with a boundary at every row start."""
        cu_seqlens = _integer_tensor("cu_seqlens", cu_seqlens, 1, "(num_docs + 1,)")
        for arg, value in (("batch", batch), ("length", length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Segments: {arg} must be a positive int, got {value!r}")
        total = batch * length
        cu = cu_seqlens.tolist()
        if len(cu) < 2 or cu[0] != 0 or cu[-1] != total:
            raise ValueError(f"Segments: cu_seqlens must run from 0 to batch * length = {total}, got {_short(cu)}")
        if any(b <= a for a, b in zip(cu, cu[1:])):
            raise ValueError(f"Segments: cu_seqlens must be strictly increasing (no empty document), got {_short(cu)}")
        missing = sorted(set(range(0, total, length)) - set(cu))
        if missing:
            raise ValueError(f"Segments: cu_seqlens must have a boundary at every row start (multiples of length = "
                             f"{length}), missing {_short(missing)}: a document cannot run from one row into the next")
        marks = torch.zeros(total, dtype=torch.bool, device=cu_seqlens.device)
        marks[cu_seqlens[:-1].long()] = True
        return cls(rearrange(marks, "(b l) -> b l", b=batch))

    @classmethod
    def from_lengths(cls, lengths: Sequence[Sequence[int]], length: int,
                     device: torch.device | str | None = None) -> Segments:
        """``lengths``: for each row, its documents' lengths (each >= 1), summing to ``length``."""
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ValueError(f"Segments: length must be a positive int, got {length!r}")
        if not isinstance(lengths, (list, tuple)) or not lengths:
            raise ValueError(f"Segments: lengths must be a non-empty list with one list of document lengths per "
                             f"row, got {lengths!r}")
        starts = torch.zeros(len(lengths), length, dtype=torch.bool)
        for row, docs in enumerate(lengths):
            ok = isinstance(docs, (list, tuple)) and len(docs) > 0 and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in docs)
            if not ok or sum(docs) != length:
                raise ValueError(f"Segments: lengths[{row}] must be positive ints summing to length = {length}, "
                                 f"got {docs!r}")
            t = 0
            for n in docs:
                starts[row, t] = True
                t += n
        return cls(starts.to(device) if device is not None else starts)

    # -- views ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.starts.device

    def to(self, device: torch.device | str) -> Segments:
        return self if torch.device(device) == self.device else Segments(self.starts.to(device))

    @cached_property
    def cu_seqlens(self) -> Tensor:
        """(num_docs + 1,) int64 boundaries over the batch flattened to one row."""
        flat = torch.tensor([s.row * self.length + s.start for s in self.spans] + [self.batch * self.length],
                            dtype=torch.long)
        return flat.to(self.device)

    @cached_property
    def doc_lengths(self) -> Tensor:
        """(num_docs,) int64: each document's length."""
        return torch.tensor([s.stop - s.start for s in self.spans], dtype=torch.long, device=self.device)

    @cached_property
    def ends(self) -> Tensor:
        """(batch, length) bool, True at every document's last token (always at a row's last)."""
        ends = torch.ones_like(self.starts)
        ends[:, :-1] = self.starts[:, 1:]
        return ends

    @cached_property
    def positions(self) -> Tensor:
        """(batch, length) int64: every token's position inside its document (0 at its first token)."""
        t = torch.arange(self.length, device=self.device).expand(self.batch, self.length)
        first = torch.where(self.starts, t, torch.zeros_like(t)).cummax(dim=1).values
        return t - first

    def __repr__(self) -> str:
        return f"Segments(batch={self.batch}, length={self.length}, num_docs={self.num_docs})"


def _short(values: list[int], limit: int = 12) -> str:
    return str(values) if len(values) <= limit else f"{values[:limit]} ... ({len(values)} values)"


__all__ = ["Segments", "Span"]
