"""Which tokens form a sequence, and the chunk layout the fast backends compute in.

The sequences of one ``ssd`` call, numbered 0 .. num_seqs-1 (``initial_state`` and the final states
are indexed this way):
- neither ``cu_seqlens`` nor ``seq_idx``: each row of the batch is one sequence (num_seqs = batch);
- ``cu_seqlens`` (num_seqs + 1,), batch 1: sequence k is tokens cu_seqlens[k] .. cu_seqlens[k+1]-1
  (flash-attn / mamba-ssm convention; an empty sequence is allowed: its final state is its initial
  state);
- ``seq_idx`` (batch, length), non-decreasing along each row: sequence = a maximal run of equal ids
  within a row, numbered row by row, left to right (so one id per row gives num_seqs = batch).

:class:`ChunkLayout` moves tokens into chunks of ``chunk_size`` in which every sequence starts at a
chunk boundary (packed sequences are shifted; each row is padded at its end). Padding has Δ = 0:
decay exp(0·A) = 1 and input Δ x Bᵀ = 0, so a padded step leaves the state unchanged and a chunk's
end state is its sequence's state after its last real token. This costs at most chunk_size - 1
padded tokens per sequence, and in return no chunk mixes two sequences: the intra-chunk work needs
no masks and the initial/final state of every sequence sits on a chunk boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Span:
    row: int
    start: int
    stop: int


def sequence_spans(batch: int, length: int, seq_idx: Tensor | None, cu_seqlens: Tensor | None) -> list[Span]:
    """The sequences of a call, in order (see the module docstring); assumes checked arguments."""
    if cu_seqlens is not None:
        bounds = cu_seqlens.tolist()
        return [Span(0, a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    if seq_idx is None:
        return [Span(r, 0, length) for r in range(batch)]
    changes = (seq_idx[:, 1:] != seq_idx[:, :-1]).nonzero().tolist()  # (row, t): a sequence starts at t + 1
    cuts: list[list[int]] = [[0] for _ in range(batch)]
    for row, t in changes:
        cuts[row].append(t + 1)
    return [Span(r, a, b) for r in range(batch) for a, b in zip(cuts[r], cuts[r][1:] + [length])]


class ChunkLayout:
    """Tokens (batch, length, ...) <-> chunks (batch, nchunks, chunk, ...), each sequence starting a chunk.

    Attributes (tensors on ``device``):
        starts (batch, nchunks) bool: the chunk is the first of a sequence (its entering state is
            that sequence's initial state, not the previous chunk's end state);
        first_seq (batch, nchunks) long: for a starting chunk, its sequence (index into initial_state);
        last_chunk (num_seqs,) long: flat index (row * nchunks + chunk) of each sequence's last chunk
            (0 for an empty sequence, see ``empty``);
        empty (num_seqs,) bool, or None when no sequence is empty.
    """

    def __init__(self, spans: list[Span], batch: int, length: int, chunk: int, device: torch.device) -> None:
        self.batch, self.length, self.chunk = batch, length, chunk
        self.num_seqs = len(spans)
        # Unpacked: one sequence per row, so the chunks are the rows cut in pieces, padded at the end.
        self.packed = not (len(spans) == batch and all(s.row == r and s.start == 0 and s.stop == length
                                                       for r, s in enumerate(spans)))
        chunks_of = [math.ceil((s.stop - s.start) / chunk) for s in spans]
        first_chunk, used = [], [0] * batch
        for s, n in zip(spans, chunks_of):
            first_chunk.append(used[s.row])
            used[s.row] += n
        self.nchunks = max(max(used), 1)
        starts = torch.zeros(batch, self.nchunks, dtype=torch.bool)
        first_seq = torch.zeros(batch, self.nchunks, dtype=torch.long)
        last_chunk = torch.zeros(len(spans), dtype=torch.long)
        for k, (s, c0, n) in enumerate(zip(spans, first_chunk, chunks_of)):
            if n > 0:
                starts[s.row, c0] = True
                first_seq[s.row, c0] = k
                last_chunk[k] = s.row * self.nchunks + c0 + n - 1
        self.starts, self.first_seq, self.last_chunk = starts.to(device), first_seq.to(device), last_chunk.to(device)
        lengths = torch.tensor([s.stop - s.start for s in spans], dtype=torch.long)
        self.empty = (lengths == 0).to(device) if bool((lengths == 0).any()) else None
        self.dst: Tensor | None = None
        if self.packed:
            # Token (row r, t) of sequence k goes to flat position r*P + c0_k*chunk + (t - start_k) of the
            # chunked layout (P = nchunks*chunk): its flat source index r*length + t plus a per-sequence shift.
            shift = torch.tensor([s.row * (self.nchunks * chunk - length) + c0 * chunk - s.start
                                  for s, c0 in zip(spans, first_chunk)], dtype=torch.long)
            self.dst = (torch.arange(batch * length) + torch.repeat_interleave(shift, lengths)).to(device)

    def to_chunks(self, t: Tensor) -> Tensor:
        """(batch, length, *rest) -> (batch, nchunks, chunk, *rest), zeros in the padding."""
        b, n, T = self.batch, self.nchunks, self.chunk
        rest = t.shape[2:]
        if self.dst is None:
            pad = n * T - self.length
            if pad:
                t = F.pad(t, (0, 0) * len(rest) + (0, pad))
            return t.reshape(b, n, T, *rest)
        flat = t.new_zeros(b * n * T, *rest).index_copy(0, self.dst, t.reshape(b * self.length, *rest))
        return flat.reshape(b, n, T, *rest)

    def from_chunks(self, t: Tensor) -> Tensor:
        """(batch, nchunks, chunk, *rest) -> (batch, length, *rest), the padding dropped."""
        b, n, T = self.batch, self.nchunks, self.chunk
        rest = t.shape[3:]
        if self.dst is None:
            return t.reshape(b, n * T, *rest)[:, : self.length]
        return t.reshape(b * n * T, *rest).index_select(0, self.dst).reshape(b, self.length, *rest)

    def initial_chunks(self, initial_state: Tensor | None) -> Tensor | None:
        """The state entering each starting chunk, (batch, nchunks, *state), zero elsewhere; None for none."""
        if initial_state is None:
            return None
        init = initial_state.index_select(0, self.first_seq.flatten()).reshape(
            self.batch, self.nchunks, *initial_state.shape[1:])
        return init * self.starts.reshape(self.batch, self.nchunks, *([1] * (initial_state.dim() - 1)))

    def final_states(self, chunk_states: Tensor, initial_state: Tensor | None) -> Tensor:
        """Each sequence's state after its last token, (num_seqs, *state), from the chunk end states
        (batch, nchunks, *state)."""
        flat = chunk_states.reshape(self.batch * self.nchunks, *chunk_states.shape[2:])
        final = flat.index_select(0, self.last_chunk)
        if self.empty is not None:  # an empty sequence ends where it started
            start = initial_state.to(final.dtype) if initial_state is not None else torch.zeros_like(final)
            final = torch.where(self.empty.reshape(-1, *([1] * (final.dim() - 1))), start, final)
        return final
