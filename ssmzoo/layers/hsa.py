"""Hierarchical sparse attention as a sequence layer (Hu, Leng, Zhao, Tu, Wu 2025, "Random Long-Context
Access for Mamba via Hardware-aligned Hierarchical Sparse Attention"; PAPERS.md), with the chunk encoder,
landmarks and retrieval query of the authors' RAMba (their ``hsa_layers.py``: ChunkingLayer,
RetrievalLayer, HierarchicalSparseAttention):

    chunks     the input split into chunks of S tokens; each complete chunk, with a learned [CLS] token
               appended, goes through a small bidirectional Transformer encoder (rotary positions inside
               the chunk only, so a chunk's encoding does not depend on where it lies)
    memory     keys, values = proj_k(enc), proj_v(enc) of the chunk's S tokens (kv_heads heads);
               landmark   = proj_landmark(enc[CLS])            (one per KV head)
    retrieval  selection query sq_t = proj_selection(x_t)      (one per retrieval head; a retrieval head
               scores the landmarks of its KV head)
    read       o_t = hsa(q_t, keys, values, landmarks, selection_q=sq_t)   (``ssmzoo.ops.hsa``): the top-K
               chunks complete before t by sq_t · landmark, a softmax inside each, mixed by stick-breaking
    out        y_t = out_proj(o_t)

A token before the end of the first chunk has no past chunk and gets 0 (HSA is paired with a local
mixer, Mamba or sliding-window attention, in RAMba and HSA-UltraLong; ``ssmzoo.models.RAMba``).

Memory for decoding (:class:`HSAState`) is the chunk cache: the keys and values of every complete chunk
and their landmarks, growing by one chunk every S tokens, plus the inputs of the chunk being filled.
With ``cache_device="cpu"`` the keys and values stay on the CPU while the layer runs on a GPU (the
paper's offloading): each step selects its chunks with the landmarks, which stay on the GPU (1/S of the
tokens), and copies only the K selected chunks over.

Where we differ from the authors: one layer holds its own memory and retrieval query (RAMba shares
one memory and one selection across its HSA layers: ``ssmzoo.models.RAMba`` does that); the encoder's
MLP width defaults to 8/3 · d_model rounded up to a multiple of 8 (theirs: down to a multiple of 64).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..modules.attention import Attention
from ..modules.checks import autocast_enabled, check_bool, check_choice, check_float, check_int
from ..modules.mlp import MLP
from ..modules.rmsnorm import RMSNorm
from ..ops import hsa as hsa_op
from ..ops.hsa.routing import select_chunks
from .base import (
    MemoryReader,
    SequenceLayer,
    SharedMemory,
    _compare_state,
    _count,
    _describe,
    _describe_expected,
    register,
)

COMBINES = ("stick_breaking", "softmax")
ENCODER_BLOCK_TOKENS = 4096  # tokens per recomputed block with encoder_checkpoint


class HSAState(NamedTuple):
    """The chunk cache after P = n · S + r tokens (P is read off the shapes: no position to keep in step).

    pending (batch, r, d_model), r < S: the inputs of the chunk being filled (on the inputs' device);
    keys, values (batch, n · S, kv_heads, head_dim): those of the n complete chunks (on ``cache_device``);
    landmarks (batch, n, kv_heads, retrieval_dim): one per complete chunk and KV head (on the inputs' device).
    """

    pending: Tensor
    keys: Tensor
    values: Tensor
    landmarks: Tensor


def state_length(state: HSAState, chunk_size: int) -> int:
    """P, the tokens a chunk cache has seen."""
    return state.landmarks.shape[1] * chunk_size + state.pending.shape[1]


def default_encoder_width(d_model: int) -> int:
    """8/3 · d_model (a SwiGLU MLP with the parameters of a 4 · d_model one), up to a multiple of 8."""
    return -(-(8 * d_model) // 24) * 8


class EncoderLayer(nn.Module):
    """A pre-norm Transformer layer without a causal mask: x + attn(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, d_model: int, heads: int, d_intermediate: int, norm_eps: float) -> None:
        super().__init__()
        self.norm1 = RMSNorm(d_model, eps=norm_eps)
        self.attn = Attention(d_model, heads, causal=False, rotary=True)
        self.norm2 = RMSNorm(d_model, eps=norm_eps)
        self.mlp = MLP(d_model, d_intermediate, activation="silu", gated=True, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ChunkEncoder(nn.Module):
    """Chunks (N, S, d_model) -> (token encodings (N, S, d_model), chunk summaries (N, d_model)).

    With layers >= 1: a learned [CLS] token is appended to every chunk, the S + 1 tokens go through
    ``layers`` bidirectional Transformer layers and a final RMSNorm, and the summary is the [CLS] output
    (the authors' ``enable_enc_cls``). With layers = 0: an RMSNorm, and the summary is the tokens' mean
    (the authors' encoder-free variant)."""

    def __init__(self, d_model: int, layers: int, heads: int, d_intermediate: int, norm_eps: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, d_intermediate, norm_eps) for _ in range(layers))
        self.cls = nn.Parameter(0.02 * torch.randn(d_model)) if layers else None
        self.norm = RMSNorm(d_model, eps=norm_eps)

    def forward(self, chunks: Tensor) -> tuple[Tensor, Tensor]:
        if self.cls is None:
            tokens = self.norm(chunks)
            return tokens, tokens.mean(1)
        h = torch.cat([chunks, self.cls.to(chunks.dtype).expand(chunks.shape[0], 1, -1)], 1)
        for layer in self.layers:
            h = layer(h)
        h = self.norm(h)
        return h[:, :-1], h[:, -1]


class ChunkMemory(nn.Module):
    """The chunk encoder and the projections to keys, values and landmarks; keeps an :class:`HSAState`
    up to date (``extend``). Shared by the ``hsa`` layer and RAMba's chunking layer."""

    def __init__(self, d_model: int, kv_heads: int, head_dim: int, retrieval_dim: int,
                 chunk_size: int, encoder_layers: int, encoder_heads: int, encoder_d_intermediate: int,
                 encoder_checkpoint: bool, qk_norm: bool, cache_device: str | None, norm_eps: float) -> None:
        super().__init__()
        self.encoder_checkpoint = encoder_checkpoint
        self.d_model, self.kv_heads, self.head_dim = d_model, kv_heads, head_dim
        self.retrieval_dim, self.chunk_size = retrieval_dim, chunk_size
        self.cache_device = cache_device
        self.encoder = ChunkEncoder(d_model, encoder_layers, encoder_heads, encoder_d_intermediate, norm_eps)
        self.proj_k = nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.proj_v = nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.proj_landmark = nn.Linear(d_model, kv_heads * retrieval_dim, bias=False)
        self.k_norm = RMSNorm(head_dim, eps=norm_eps) if qk_norm else None

    def cache_device_for(self, device: torch.device) -> torch.device:
        return device if self.cache_device is None or device.type == "meta" else torch.device(self.cache_device)

    def encode(self, chunks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """chunks (batch, n, S, d_model) -> keys, values (batch, n · S, kv_heads, head_dim), landmarks
        (batch, n, kv_heads, retrieval_dim)."""
        batch = chunks.shape[0]
        flat = rearrange(chunks, "b n s d -> (b n) s d")
        if self.encoder_checkpoint and torch.is_grad_enabled():
            # Chunks are encoded independently: recompute them in backward a block at a time, so the encoder's
            # activations (most of the layer's memory at long lengths) are held for one block only.
            block = max(1, ENCODER_BLOCK_TOKENS // self.chunk_size)
            parts = [checkpoint(self.encoder, part, use_reentrant=False) for part in flat.split(block)]
            tokens, summary = (torch.cat(t) for t in zip(*parts))
        else:
            tokens, summary = self.encoder(flat)
        keys = rearrange(self.proj_k(tokens), "(b n) s (h e) -> b (n s) h e", b=batch, e=self.head_dim)
        values = rearrange(self.proj_v(tokens), "(b n) s (h e) -> b (n s) h e", b=batch, e=self.head_dim)
        if self.k_norm is not None:
            keys = self.k_norm(keys)
        landmarks = rearrange(self.proj_landmark(summary), "(b n) (h e) -> b n h e", b=batch, e=self.retrieval_dim)
        return keys, values, landmarks

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> HSAState:
        cache = self.cache_device_for(device)
        return HSAState(
            torch.zeros(batch, 0, self.d_model, device=device, dtype=dtype),
            torch.zeros(batch, 0, self.kv_heads, self.head_dim, device=cache, dtype=dtype),
            torch.zeros(batch, 0, self.kv_heads, self.head_dim, device=cache, dtype=dtype),
            torch.zeros(batch, 0, self.kv_heads, self.retrieval_dim, device=device, dtype=dtype),
        )

    def extend(self, state: HSAState, x: Tensor) -> HSAState:
        """The cache after the tokens x (batch, L, d_model): the chunks they complete are encoded (on x's
        device) and appended (keys and values moved to the cache device)."""
        S = self.chunk_size
        seq = torch.cat([state.pending.to(x.dtype), x], 1)
        n = seq.shape[1] // S
        if n == 0:
            return state._replace(pending=seq)
        keys, values, landmarks = self.encode(rearrange(seq[:, : n * S], "b (n s) d -> b n s d", s=S))
        cache = state.keys.device
        return HSAState(
            seq[:, n * S:],
            torch.cat([state.keys, keys.to(cache)], 1),
            torch.cat([state.values, values.to(cache)], 1),
            torch.cat([state.landmarks, landmarks], 1),
        )


class ChunkMemoryView(NamedTuple):
    """What a :class:`SharedChunkMemory` gives the reads above it: the chunk cache (every chunk complete before
    the last position), the selection queries (batch, L, retrieval_heads, retrieval_dim) of the positions,
    and the position of the first of them."""

    memory: HSAState
    selection_q: Tensor
    offset: int


class SharedChunkMemory(SharedMemory):
    """RAMba's chunking and retrieval layers: the chunk memory of the residual stream at one depth (chunks
    encoded into keys, values and landmarks) and one selection query per token and retrieval head, both shared
    by every HSA read above it (``{"memory": "chunks"}`` in a language model's pattern). State: :class:`HSAState`.
    Arguments as :class:`HSA`'s."""

    def __init__(self, d_model: int, kv_heads: int = 1, head_dim: int | None = None, heads: int = 4,
                 chunk_size: int = 64, retrieval_heads: int | None = None, retrieval_dim: int | None = None,
                 encoder_layers: int = 1, encoder_heads: int | None = None, encoder_d_intermediate: int | None = None,
                 encoder_checkpoint: bool = False, qk_norm: bool = False, cache_device: str | None = None,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        args = check_hsa_args("SharedChunkMemory", d_model, heads, kv_heads, head_dim, chunk_size, 1,
                              "stick_breaking", retrieval_heads, retrieval_dim, encoder_layers, encoder_heads,
                              encoder_d_intermediate, encoder_checkpoint, qk_norm, cache_device, None, norm_eps)
        self.d_model, self.chunk_size, self.retrieval_dim = d_model, chunk_size, args["retrieval_dim"]
        self.memory = ChunkMemory(d_model, kv_heads, args["head_dim"], args["retrieval_dim"], chunk_size,
                                  encoder_layers, args["encoder_heads"], args["encoder_d_intermediate"],
                                  encoder_checkpoint, qk_norm, cache_device, norm_eps)
        self.norm_selection = RMSNorm(d_model, eps=norm_eps)
        self.proj_selection = nn.Linear(d_model, args["retrieval_heads"] * args["retrieval_dim"], bias=False)

    def _selection(self, h: Tensor) -> Tensor:
        return rearrange(self.proj_selection(self.norm_selection(h)), "... (h e) -> ... h e", e=self.retrieval_dim)

    def init_state(self, batch_size: int, device: torch.device | str | None, dtype: torch.dtype | None) -> HSAState:
        ref = self.proj_selection.weight
        return self.memory.init_state(batch_size, torch.device(device) if device is not None else ref.device,
                                      dtype if dtype is not None else ref.dtype)

    def forward(self, x: Tensor, state: HSAState | None) -> tuple[ChunkMemoryView, HSAState]:
        if state is None:
            state = self.memory.init_state(x.shape[0], x.device, x.dtype)
        offset = state_length(state, self.chunk_size)
        state = self.memory.extend(state, x)  # a chunk is read only once complete, so reads may see x's chunks
        return ChunkMemoryView(state, self._selection(x), offset), state

    def step(self, x_t: Tensor, state: HSAState, check_state: bool = True) -> tuple[ChunkMemoryView, HSAState]:
        if check_state:
            check_hsa_state("SharedChunkMemory", "state", self.memory, state, x_t[:, None])
        view = ChunkMemoryView(state, self._selection(x_t), state_length(state, self.chunk_size))
        return view, self.memory.extend(state, x_t[:, None])


class HSARead(MemoryReader):
    """The per-layer part of HSA: queries from x, the read of a chunk memory, the output projection.

    ``forward`` reads for a block of queries, ``step`` for one; both need the selection queries (one per
    retrieval head) made by the caller, so several reads can share one selection (RAMba: ``read`` and
    ``read_step`` take them from the :class:`SharedChunkMemory` below)."""

    def __init__(self, d_model: int, heads: int, head_dim: int, chunk_size: int, top_k: int, combine: str,
                 qk_norm: bool, hsa_backend: str | None, norm_eps: float) -> None:
        super().__init__()
        self.heads, self.head_dim, self.chunk_size, self.top_k, self.combine = heads, head_dim, chunk_size, top_k, combine
        self.hsa_backend = hsa_backend
        self.q_proj = nn.Linear(d_model, heads * head_dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps=norm_eps) if qk_norm else None
        self.out_proj = nn.Linear(heads * head_dim, d_model, bias=False)

    def _queries(self, x: Tensor) -> Tensor:
        q = rearrange(self.q_proj(x), "b t (h e) -> b t h e", e=self.head_dim)
        return q if self.q_norm is None else self.q_norm(q)

    def _out(self, o: Tensor) -> Tensor:
        return self.out_proj(rearrange(o, "b t h e -> b t (h e)"))

    def forward(self, x: Tensor, memory: HSAState, selection_q: Tensor, offset: int) -> Tensor:
        """x (batch, L, d_model) at positions offset, ..., offset + L − 1; memory holds every chunk complete
        before the last of them; selection_q (batch, L, retrieval_heads, retrieval_dim)."""
        q = self._queries(x)
        if memory.landmarks.shape[1] == 0:  # no chunk yet: nothing to read
            return self._out(torch.zeros_like(q))
        o = hsa_op.hsa(q, memory.keys.to(x.device), memory.values.to(x.device), memory.landmarks,
                       chunk_size=self.chunk_size, top_k=self.top_k, combine=self.combine, offset=offset,
                       selection_q=selection_q, backend=self.hsa_backend)
        return self._out(o)

    def read(self, x: Tensor, shared: ChunkMemoryView) -> Tensor:
        return self.forward(x, shared.memory, shared.selection_q, shared.offset)

    def read_step(self, x_t: Tensor, shared: ChunkMemoryView) -> Tensor:
        memory = shared.memory
        return self.step(x_t, memory, shared.selection_q, shared.offset, memory.keys.device != x_t.device)

    def step(self, x_t: Tensor, memory: HSAState, selection_q: Tensor, position: int, gather: bool) -> Tensor:
        """x_t (batch, d_model) at ``position``; selection_q (batch, retrieval_heads, retrieval_dim). With
        ``gather`` only the selected chunks are read from the memory's keys and values (on another device)."""
        if not gather:
            return self.forward(x_t[:, None], memory, selection_q[:, None], position)[:, 0]
        q = self._queries(x_t[:, None])
        o = read_gathered(q, selection_q[:, None], memory, self.chunk_size, self.top_k, self.combine, position,
                          self.hsa_backend)
        return self._out(o)[:, 0]


def read_gathered(q: Tensor, selection_q: Tensor, memory: HSAState, chunk_size: int, top_k: int, combine: str,
                  position: int, backend: str | None) -> Tensor:
    """One query position's HSA read that copies only the selected chunks' keys and values to q's device.

    The selection is the op's (``select_chunks``: top-K past chunks, ties to the more recent). Each
    (sequence, retrieval head) then reads its own c <= K chunks, gathered oldest first, as a tiny HSA call
    whose query lies just after them (offset c · S): every chunk is then past and selected, in the same
    recency order, with the same scores, so the result is the op's on the whole cache."""
    S = chunk_size
    batch = q.shape[0]
    hs, hk = selection_q.shape[2], memory.keys.shape[2]
    c = min(top_k, position // S, memory.landmarks.shape[1])
    if c == 0:
        return torch.zeros_like(q)
    idx, _, _ = select_chunks(selection_q, memory.landmarks, S, top_k, position)  # (batch, 1, hs, K'), valid first
    chunks = idx[:, 0, :, :c].sort(-1).values  # (batch, hs, c), oldest first
    kv_head = torch.arange(hs, device=q.device) // (hs // hk)
    cache = memory.keys.device
    b_i, g_i, n_i = (t.to(cache) for t in (torch.arange(batch, device=q.device)[:, None, None],
                                              kv_head[None, :, None], chunks))
    keys = rearrange(memory.keys, "b (n s) g e -> b g n s e", s=S)[b_i, g_i, n_i].to(q.device)  # (b, hs, c, S, e)
    values = rearrange(memory.values, "b (n s) g e -> b g n s e", s=S)[b_i, g_i, n_i].to(q.device)
    landmarks = rearrange(memory.landmarks, "b n g e -> b g n e")[
        torch.arange(batch, device=q.device)[:, None, None], kv_head[None, :, None], chunks]  # (b, hs, c, e)
    o = hsa_op.hsa(
        rearrange(q, "b t (s r) e -> (b s) t r e", s=hs),
        rearrange(keys, "b h n s e -> (b h) (n s) 1 e"),
        rearrange(values, "b h n s e -> (b h) (n s) 1 e"),
        rearrange(landmarks, "b h n e -> (b h) n 1 e"),
        chunk_size=S, top_k=top_k, combine=combine, offset=c * S,
        selection_q=rearrange(selection_q, "b t s e -> (b s) t 1 e"), backend=backend,
    )
    return rearrange(o, "(b s) t r e -> b t (s r) e", b=batch)


@register("hsa")
class HSA(SequenceLayer):
    """Hierarchical sparse attention with its own chunk memory. Input and output (batch, length, d_model).

    Args:
        d_model: model width.
        heads: query heads.
        kv_heads: key/value heads of the chunk memory (divides retrieval_heads; the authors' RAMba uses 1).
        head_dim: width of each query/key/value head (None: d_model / heads).
        chunk_size: S, tokens per chunk (the paper: 64).
        top_k: K, chunks each token reads (the paper: 8).
        combine: how the K chunk reads mix: "stick_breaking" (the paper; most recent chunk first) or "softmax".
        retrieval_heads: selection heads, each with its own selection query (None: kv_heads; kv_heads
            divides it and it divides heads). Selection head s scores the landmarks of KV head
            s // (retrieval_heads / kv_heads); query head h reads the chunks its selection head
            h // (heads / retrieval_heads) picked.
        retrieval_dim: width of a selection query and of a landmark (None: head_dim).
        encoder_layers: bidirectional Transformer layers of the chunk encoder (0: RMSNorm and a mean).
        encoder_heads: attention heads of the encoder (None: heads).
        encoder_d_intermediate: hidden width of the encoder's SwiGLU MLP (None: 8/3 · d_model, to a
            multiple of 8).
        encoder_checkpoint: recompute the chunk encoder in backward, a block of chunks at a time, instead of
            keeping its activations (less memory in training, one more encoder forward).
        qk_norm: RMSNorm on every query and key head (the authors' ``enable_qk_norm``).
        cache_device: where the chunk keys and values live (None: with the inputs; "cpu": offloaded while
            the layer runs on a GPU).
        hsa_backend: backend of the HSA op (None: $SSMZOO_BACKEND or "auto"; see ``ssmzoo.ops.hsa.dispatch``).
        norm_eps: epsilon of the RMSNorms.

    State: :class:`HSAState` (pending inputs, keys, values, landmarks); its chunk dimension grows by one
    every chunk_size tokens, so ``init_state``'s form is checked with the chunk count read off the state.
    """

    supported_dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

    def __init__(
        self,
        d_model: int,
        heads: int = 4,
        kv_heads: int = 1,
        head_dim: int | None = None,
        chunk_size: int = 64,
        top_k: int = 8,
        combine: Literal["stick_breaking", "softmax"] = "stick_breaking",
        retrieval_heads: int | None = None,
        retrieval_dim: int | None = None,
        encoder_layers: int = 1,
        encoder_heads: int | None = None,
        encoder_d_intermediate: int | None = None,
        encoder_checkpoint: bool = False,
        qk_norm: bool = False,
        cache_device: str | None = None,
        hsa_backend: str | None = None,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__(d_model, causal=True)
        args = check_hsa_args("HSA", d_model, heads, kv_heads, head_dim, chunk_size, top_k, combine, retrieval_heads,
                              retrieval_dim, encoder_layers, encoder_heads, encoder_d_intermediate,
                              encoder_checkpoint, qk_norm,
                              cache_device, hsa_backend, norm_eps)
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, args["head_dim"]
        self.chunk_size, self.top_k, self.combine = chunk_size, top_k, combine
        self.retrieval_heads, self.retrieval_dim = args["retrieval_heads"], args["retrieval_dim"]
        self.cache_device, self.hsa_backend = cache_device, hsa_backend
        self.memory = ChunkMemory(d_model, kv_heads, self.head_dim, self.retrieval_dim,
                                  chunk_size, encoder_layers, args["encoder_heads"], args["encoder_d_intermediate"],
                                  encoder_checkpoint, qk_norm, cache_device, norm_eps)
        self.proj_selection = nn.Linear(d_model, self.retrieval_heads * self.retrieval_dim, bias=False)
        self.read = HSARead(d_model, heads, self.head_dim, chunk_size, top_k, combine, qk_norm, hsa_backend, norm_eps)

    @property
    def out_proj(self) -> nn.Linear:
        """The output projection (``read.out_proj``), under the name models rescale at init."""
        return self.read.out_proj

    def _selection(self, x: Tensor) -> Tensor:
        return rearrange(self.proj_selection(x), "... (h e) -> ... h e", e=self.retrieval_dim)

    # -- contract -----------------------------------------------------------------------------
    def _forward(self, x: Tensor, state: HSAState | None, lengths: Tensor | None,
                 return_state: bool) -> tuple[Tensor, HSAState | None]:
        # Causal, and a chunk is read only once complete: right padding never reaches a real token.
        if state is None:
            state = self.memory.init_state(x.shape[0], x.device, x.dtype)
        offset = state_length(state, self.chunk_size)
        state = self.memory.extend(state, x)
        y = self.read(x, state, self._selection(x), offset)
        return y, state if return_state else None

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> HSAState:
        return self.memory.init_state(batch_size, device, dtype)

    def _step(self, x_t: Tensor, state: HSAState) -> tuple[Tensor, HSAState]:
        position = state_length(state, self.chunk_size)
        gather = state.keys.device != x_t.device
        y = self.read.step(x_t, state, self._selection(x_t), position, gather)
        return y, self.memory.extend(state, x_t[:, None])

    def _check_state(self, state: HSAState, x: Tensor, batch: int | None = None) -> None:
        check_hsa_state(self._name, "state", self.memory, state, x, batch)


def check_hsa_state(owner: str, path: str, memory: ChunkMemory, state: object, x: Tensor,
                    batch: int | None = None) -> None:
    """A ValueError naming ``owner`` and ``path`` unless ``state`` has the form of ``memory.init_state`` after
    the P = n · S + r tokens its shapes say (n from the landmarks, r < S from the pending inputs), for
    inputs like x: the same dtype, pending inputs and landmarks on x's device, keys and values on the
    cache device. ``batch``: the number of states expected (x's batch size, or its documents when packed)."""
    batch, S = (x.shape[0] if batch is None else batch), memory.chunk_size
    like = f"like init_state({batch}){path.removeprefix('state')}"
    if not (type(state) is HSAState and all(isinstance(t, Tensor) for t in state)):
        raise ValueError(f"{owner}: {path} must be an HSAState(pending, keys, values, landmarks) {like}, "
                         f"got {_describe(state)}")
    n = state.landmarks.shape[1] if state.landmarks.dim() == 4 else 0
    r = min(state.pending.shape[1], S - 1) if state.pending.dim() == 3 else 0
    with torch.no_grad():
        form = memory.init_state(batch, torch.device("meta"), x.dtype)
    want = HSAState(
        form.pending.new_empty(batch, r, memory.d_model),
        form.keys.new_empty(batch, n * S, memory.kv_heads, memory.head_dim),
        form.values.new_empty(batch, n * S, memory.kv_heads, memory.head_dim),
        form.landmarks.new_empty(batch, n, memory.kv_heads, memory.retrieval_dim),
    )
    cache = memory.cache_device_for(x.device)
    check_dtypes = not autocast_enabled(x.device)
    for field, device in zip(HSAState._fields, (x.device, cache, cache, x.device)):
        problem = _compare_state(getattr(state, field), getattr(want, field), f"{path}.{field}", device, check_dtypes)
        if problem is None:
            continue
        where, expected, got = problem
        hint = ""
        if isinstance(got, Tensor) and got.dim() == expected.dim() and got.dim() > 0 and got.shape[0] != batch:
            hint = f" (the state has batch size {got.shape[0]} but the input has {_count(batch, x)})"
        raise ValueError(f"{owner}: {where} must be {_describe_expected(expected, device)} {like}.{field} after "
                         f"{n * S + r} tokens ({n} chunks of {S}, {r} pending), got {_describe(got)}{hint}")


def check_hsa_args(owner: str, d_model: int, heads: int, kv_heads: int, head_dim: int | None, chunk_size: int,
                   top_k: int, combine: str, retrieval_heads: int | None, retrieval_dim: int | None,
                   encoder_layers: int, encoder_heads: int | None, encoder_d_intermediate: int | None,
                   encoder_checkpoint: bool, qk_norm: bool, cache_device: str | None, hsa_backend: str | None,
                   norm_eps: float) -> dict:
    """Validate HSA's constructor arguments (``owner`` names the class in the messages); returns the
    defaults resolved: head_dim, retrieval_heads, retrieval_dim, encoder_heads, encoder_d_intermediate."""
    check_int(owner, "heads", heads)
    check_int(owner, "kv_heads", kv_heads)
    if head_dim is None:
        if d_model % heads:
            raise ValueError(f"{owner}: heads={heads} must divide d_model={d_model} (or give head_dim)")
        head_dim = d_model // heads
    check_int(owner, "head_dim", head_dim)
    check_int(owner, "chunk_size", chunk_size)
    check_int(owner, "top_k", top_k)
    check_choice(owner, "combine", combine, COMBINES)
    retrieval_heads = kv_heads if retrieval_heads is None else check_int(owner, "retrieval_heads", retrieval_heads)
    if retrieval_heads % kv_heads or heads % retrieval_heads:
        raise ValueError(f"{owner}: need kv_heads={kv_heads} | retrieval_heads={retrieval_heads} | heads={heads} "
                         "(each divides the next)")
    retrieval_dim = head_dim if retrieval_dim is None else check_int(owner, "retrieval_dim", retrieval_dim)
    check_int(owner, "encoder_layers", encoder_layers, minimum=0)
    encoder_heads = heads if encoder_heads is None else check_int(owner, "encoder_heads", encoder_heads)
    if encoder_layers and (d_model % encoder_heads or (d_model // encoder_heads) % 2):
        raise ValueError(f"{owner}: encoder_heads={encoder_heads} must divide d_model={d_model} into heads of even "
                         "width (rotary)")
    if encoder_d_intermediate is None:
        encoder_d_intermediate = default_encoder_width(d_model)
    check_int(owner, "encoder_d_intermediate", encoder_d_intermediate)
    check_bool(owner, "encoder_checkpoint", encoder_checkpoint)
    check_bool(owner, "qk_norm", qk_norm)
    if cache_device is not None:
        try:
            if not isinstance(cache_device, str):
                raise TypeError
            torch.device(cache_device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"{owner}: cache_device must be None or a device string such as 'cpu', "
                             f"got {cache_device!r}") from e
    hsa_op.dispatch.check_name(hsa_backend, owner, "hsa_backend")
    check_float(owner, "norm_eps", norm_eps, above=0.0)
    return dict(head_dim=head_dim, retrieval_heads=retrieval_heads, retrieval_dim=retrieval_dim,
                encoder_heads=encoder_heads, encoder_d_intermediate=encoder_d_intermediate)
