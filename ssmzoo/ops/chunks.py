"""What chunked scans share: segment sums of log-decays, the chunk layout of (packed) sequences, and the
recurrence between chunks.

A chunked scan (SSD, Dao & Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality", arXiv:2405.21060, sec. 6; gated delta rules; other diagonal recurrences)
cuts each sequence into chunks of T tokens, works inside a chunk with matrices of decays
exp(Σ_{k=j+1..i} a_k) (:func:`segsum`), and carries a state from chunk to chunk (:func:`pass_states`).
:class:`ChunkLayout` moves tokens into chunks so that every sequence (a row, or a packed document) starts
a chunk: no chunk mixes two sequences, and every initial and final state sits on a chunk boundary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .segments import Segments, Span


def segsum(v: Tensor) -> Tensor:
    """(..., c) -> (..., c, c): out[i, j] = Σ_{k=j+1..i} v_k for i >= j, -inf above the diagonal.
    A cumsum of the masked row-repeated v: no difference of large partial sums."""
    c = v.shape[-1]
    strict = torch.ones(c, c, dtype=torch.bool, device=v.device).tril(-1)
    out = v[..., :, None].expand(*v.shape, c).masked_fill(~strict, 0).cumsum(dim=-2)
    return out.masked_fill(~torch.ones_like(strict).tril(), -math.inf)


# Decays below exp(FLOOR) are rounded up to it (an absolute error below 1e-26 in float32): exp of a very
# negative number, or -inf, takes the CPU's slow subnormal path (~100x slower), and subnormal factors
# slow the matmuls that follow just as much.
FLOOR = {torch.float32: -60.0, torch.float64: -600.0}


def decay_exp(t: Tensor) -> Tensor:
    """exp(t) for t = a (segment) sum of log-decays, floored at exp(FLOOR) (see FLOOR)."""
    return t.clamp_min(FLOOR[t.dtype]).exp_()


def sequence_spans(batch: int, length: int, segments: Segments | None) -> list[Span]:
    """The sequences of a (batch, length) input, in order: its documents, or one per row."""
    return list(segments.spans) if segments is not None else [Span(r, 0, length) for r in range(batch)]


class ChunkLayout:
    """Tokens (batch, length, ...) <-> chunks (batch, nchunks, chunk, ...), each sequence starting a chunk.

    Packed sequences are shifted so each starts a chunk, and each row is padded at its end: at most
    chunk - 1 padded tokens per sequence. A scan whose padded steps leave the state unchanged (decay 1,
    input 0, e.g. Δ = 0) then ends each sequence's last chunk in that sequence's final state.

    Attributes (tensors on ``device``):
        starts (batch, nchunks) bool: the chunk is the first of a sequence (its entering state is
            that sequence's initial state, not the previous chunk's end state);
        first_seq (batch, nchunks) long: for a starting chunk, its sequence (index into initial states);
        last_chunk (num_seqs,) long: flat index (row * nchunks + chunk) of each sequence's last chunk.
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
            starts[s.row, c0] = True
            first_seq[s.row, c0] = k
            last_chunk[k] = s.row * self.nchunks + c0 + n - 1
        self.starts, self.first_seq, self.last_chunk = starts.to(device), first_seq.to(device), last_chunk.to(device)
        self.dst: Tensor | None = None
        if self.packed:
            # Token (row r, t) of sequence k goes to flat position r*P + c0_k*chunk + (t - start_k) of the
            # chunked layout (P = nchunks*chunk): its flat source index r*length + t plus a per-sequence shift.
            lengths = torch.tensor([s.stop - s.start for s in spans], dtype=torch.long)
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

    def final_states(self, chunk_states: Tensor) -> Tensor:
        """Each sequence's state after its last token, (num_seqs, *state), from the chunk end states
        (batch, nchunks, *state)."""
        flat = chunk_states.reshape(self.batch * self.nchunks, *chunk_states.shape[2:])
        return flat.index_select(0, self.last_chunk)


def pass_states(U: Tensor, chunk_decay: Tensor, init: Tensor | None, starts: Tensor) -> tuple[Tensor, Tensor]:
    """The recurrence between chunks of a scan with a scalar decay per head: S_c = exp(a_c) E_c + U_c with
    the entering state E_c = S_{c-1}, or init_c on a chunk that starts a sequence. Solved in one product
    with the (chunks × chunks) matrix exp(segsum(a)) masked across sequences:
    S_c = Σ_{j≤c, same sequence} exp(Σ_{i=j+1..c} a_i) (U_j + exp(a_j) init_j).

    U, init (b, c, h, p, n): each chunk's end state from its own tokens, and the initial states
    (:meth:`ChunkLayout.initial_chunks`); chunk_decay a (b, c, h): each chunk's total log-decay; starts
    (b, c) bool. Returns the chunk end states S and the entering states E, both (b, c, h, p, n)."""
    d_state = U.shape[-1]
    a = rearrange(chunk_decay, "b c h -> b h c")
    U = rearrange(U, "b c h p n -> b h c (p n)")
    if init is not None:
        init = rearrange(init, "b c h p n -> b h c (p n)")
        U = U + torch.exp(a)[..., None] * init
    seq = torch.cumsum(starts.long(), dim=1)  # chunks of one sequence share this id
    same = (seq[:, :, None] == seq[:, None, :])[:, None]  # (b, 1, c, c)
    S = torch.exp(segsum(a).masked_fill(~same, -math.inf)) @ U  # (b, h, c, p n)
    E = torch.cat([torch.zeros_like(S[:, :, :1]), S[:, :, :-1]], dim=2) * (~starts)[:, None, :, None]
    if init is not None:
        E = E + init
    back = "b h c (p n) -> b c h p n"
    return rearrange(S, back, n=d_state), rearrange(E, back, n=d_state)
