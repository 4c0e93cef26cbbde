"""RAMba (Hu, Leng, Zhao, Tu, Wu 2025; PAPERS.md): a language model whose upper layers read a chunk memory
of the lower layers' output through hierarchical sparse attention, so any token of a very long context
can be reached in O(K · S) per token while the memory stays off the accelerator.

    embedding
    lower      n_lower_layers × [x + lower_layer(norm(x))]                      (the paper: Mamba-2)
    chunking   the lower output, split into chunks of S, encoded once into keys, values and landmarks
               (``ssmzoo.layers.hsa.ChunkMemory``: [CLS] + a bidirectional encoder per chunk)
    retrieval  one selection query per token and retrieval head, from the lower output
    upper      n_hsa_layers × ( [x + HSA(norm(x))],  local_per_hsa × [x + local_layer(norm(x))] )
    head       RMSNorm, a linear head tied to the embedding

Every HSA layer has its own queries and output projection and reads the one memory with the one
selection, as in the authors' code (``modeling_ramba.py``: ChunkingLayer, RetrievalLayer, then groups of
HierarchicalSparseAttention + ``num_mamba_per_gca`` Mamba2 blocks). With ``lower_layer = local_layer =
"swa"`` and ``d_intermediate > 0`` (an MLP after every mixer) it is the SWA + HSA Transformer of the
authors' later HSA-UltraLong ("Every Token Counts", 2025), which they recommend for very long pretraining.

Where we differ from the authors: the selection is recomputed by each HSA layer's op call from the shared
selection queries and landmarks (the same chunks and weights; they compute it once); no segment-wise
state resets while training (``segment_size``); the lower and local mixers are any registered causal
layer by name (default "mamba2", the paper's).
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from ..layers import build
from ..layers.base import SequenceLayer, check_lengths, input_checks, input_checks_enabled
from ..layers.hsa import ChunkMemory, HSARead, HSAState, check_hsa_args, check_hsa_state, state_length
from ..modules.checks import check_float, check_int
from ..modules.mlp import MLP
from ..modules.rmsnorm import RMSNorm
from .generation import GenerationMixin

DEFAULT_MIXER = "mamba2"  # the paper's


class RAMbaState(NamedTuple):
    """lower: the lower layers' states; memory: the chunk cache of the lower output (:class:`HSAState`);
    local: the states of the upper local layers, in order."""

    lower: tuple
    memory: HSAState
    local: tuple


class MixerBlock(nn.Module):
    """x + mixer(RMSNorm(x)), then x + MLP(RMSNorm(x)) when d_intermediate > 0."""

    def __init__(self, mixer: SequenceLayer, d_model: int, norm_eps: float, d_intermediate: int) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer
        self.mlp = _mlp(d_model, norm_eps, d_intermediate)

    def forward(self, x: Tensor, state: Any, return_state: bool, lengths: Tensor | None) -> tuple[Tensor, Any]:
        if return_state or state is not None:
            y, state = self.mixer(self.norm(x), state=state, return_state=True, lengths=lengths)
        else:
            y = self.mixer(self.norm(x), lengths=lengths)
        return _with_mlp(self.mlp, x + y), state

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        y_t, state = self.mixer.step(self.norm(x_t), state)
        return _with_mlp(self.mlp, x_t + y_t), state


class HSABlock(nn.Module):
    """x + HSA(RMSNorm(x)) over the shared memory, then x + MLP(RMSNorm(x)) when d_intermediate > 0."""

    def __init__(self, read: HSARead, d_model: int, norm_eps: float, d_intermediate: int) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.read = read
        self.mlp = _mlp(d_model, norm_eps, d_intermediate)

    def forward(self, x: Tensor, memory: HSAState, selection_q: Tensor, offset: int) -> Tensor:
        return _with_mlp(self.mlp, x + self.read(self.norm(x), memory, selection_q, offset))

    def step(self, x_t: Tensor, memory: HSAState, selection_q: Tensor, position: int) -> Tensor:
        gather = memory.keys.device != x_t.device
        return _with_mlp(self.mlp, x_t + self.read.step(self.norm(x_t), memory, selection_q, position, gather))


def _mlp(d_model: int, norm_eps: float, d_intermediate: int) -> nn.Module | None:
    if not d_intermediate:
        return None
    return nn.Sequential(RMSNorm(d_model, eps=norm_eps),
                         MLP(d_model, d_intermediate, activation="silu", gated=True, bias=False))


def _with_mlp(mlp: nn.Module | None, x: Tensor) -> Tensor:
    return x if mlp is None else x + mlp(x)


class RAMba(GenerationMixin, nn.Module):
    """Tokens (batch, length) -> next-token logits (batch, length, vocab_size).

    Args:
        vocab_size: number of tokens (under the ``ssmzoo`` command: from the datamodule).
        d_model: width.
        n_lower_layers: mixer blocks below the chunk memory.
        n_hsa_layers: HSA blocks above it (>= 1), each followed by ``local_per_hsa`` local blocks.
        local_per_hsa: local mixer blocks after each HSA block (the authors' ``num_mamba_per_gca``).
        lower_layer, local_layer: registered names of causal layers ("mamba2", "mamba", "swa", ...).
        lower_layer_args, local_layer_args: their constructor arguments (d_model is added).
        heads, kv_heads, head_dim, chunk_size, top_k, combine, retrieval_heads, retrieval_dim, encoder_layers,
            encoder_heads, encoder_d_intermediate, encoder_checkpoint, qk_norm, cache_device, hsa_backend: as in
            :class:`ssmzoo.layers.HSA` (the memory's and every HSA block's).
        d_intermediate: hidden width of a SwiGLU MLP after every mixer (0: none, as in Mamba LMs; the SWA
            design is a Transformer and wants one).
        norm_eps: epsilon of the RMSNorms.
        tie_embeddings: share the head's weight with the embedding.
        initializer_range: std of the embedding init.
        rescale_prenorm_residual: divide every block's output projections by sqrt(residual branches) at
            init (GPT-2's scheme), so the residual stream does not grow with depth.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_lower_layers: int = 2,
        n_hsa_layers: int = 1,
        local_per_hsa: int = 2,
        lower_layer: str = DEFAULT_MIXER,
        lower_layer_args: dict[str, Any] | None = None,
        local_layer: str = DEFAULT_MIXER,
        local_layer_args: dict[str, Any] | None = None,
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
        d_intermediate: int = 0,
        norm_eps: float = 1e-5,
        tie_embeddings: bool = True,
        initializer_range: float = 0.02,
        rescale_prenorm_residual: bool = True,
    ) -> None:
        super().__init__()
        check_int("RAMba", "vocab_size", vocab_size)
        check_int("RAMba", "d_model", d_model)
        check_int("RAMba", "n_lower_layers", n_lower_layers, minimum=0)
        check_int("RAMba", "n_hsa_layers", n_hsa_layers)
        check_int("RAMba", "local_per_hsa", local_per_hsa, minimum=0)
        check_int("RAMba", "d_intermediate", d_intermediate, minimum=0)
        check_float("RAMba", "initializer_range", initializer_range, above=0.0)
        hsa_args = check_hsa_args("RAMba", d_model, heads, kv_heads, head_dim, chunk_size, top_k, combine,
                                  retrieval_heads, retrieval_dim, encoder_layers, encoder_heads,
                                  encoder_d_intermediate, encoder_checkpoint, qk_norm, cache_device, hsa_backend,
                                  norm_eps)
        for arg, value in (("tie_embeddings", tie_embeddings), ("rescale_prenorm_residual", rescale_prenorm_residual)):
            if not isinstance(value, bool):
                raise ValueError(f"RAMba: {arg} must be True or False, got {value!r}")
        self.vocab_size, self.d_model, self.chunk_size = vocab_size, d_model, chunk_size
        self.head_dim, self.retrieval_dim = hsa_args["head_dim"], hsa_args["retrieval_dim"]

        self.embedding = nn.Embedding(vocab_size, d_model)
        self.lower = nn.ModuleList(
            MixerBlock(_causal_layer("lower_layer", lower_layer, lower_layer_args, d_model), d_model, norm_eps,
                       d_intermediate) for _ in range(n_lower_layers))
        self.memory = ChunkMemory(d_model, kv_heads, self.head_dim, self.retrieval_dim, chunk_size, encoder_layers,
                                  hsa_args["encoder_heads"], hsa_args["encoder_d_intermediate"], encoder_checkpoint,
                                  qk_norm,
                                  cache_device, norm_eps)
        self.norm_selection = RMSNorm(d_model, eps=norm_eps)
        self.proj_selection = nn.Linear(d_model, hsa_args["retrieval_heads"] * self.retrieval_dim, bias=False)
        self.upper = nn.ModuleList()
        for _ in range(n_hsa_layers):
            read = HSARead(d_model, heads, self.head_dim, chunk_size, top_k, combine, qk_norm, hsa_backend, norm_eps)
            self.upper.append(HSABlock(read, d_model, norm_eps, d_intermediate))
            for _ in range(local_per_hsa):
                mixer = _causal_layer("local_layer", local_layer, local_layer_args, d_model)
                self.upper.append(MixerBlock(mixer, d_model, norm_eps, d_intermediate))
        self.norm_f = RMSNorm(d_model, eps=norm_eps)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)

        nn.init.normal_(self.embedding.weight, std=initializer_range)
        if tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        if rescale_prenorm_residual:
            blocks = [*self.lower, *self.upper]
            scale = math.sqrt((2 if d_intermediate else 1) * len(blocks))
            with torch.no_grad():
                for block in blocks:
                    mixer = block.mixer if isinstance(block, MixerBlock) else block.read
                    mlp_down = block.mlp[1].down if block.mlp is not None else None
                    for proj in (getattr(mixer, "out_proj", None), mlp_down):
                        if isinstance(proj, nn.Linear):
                            proj.weight /= scale

    @property
    def _local_blocks(self) -> list[MixerBlock]:
        return [b for b in self.upper if isinstance(b, MixerBlock)]

    def _selection(self, h: Tensor) -> Tensor:
        return rearrange(self.proj_selection(self.norm_selection(h)), "... (h e) -> ... h e", e=self.retrieval_dim)

    # -- checks ---------------------------------------------------------------------------------
    def _check_tokens(self, tokens: Tensor, arg: str, rank: int) -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() != rank:
            doc = "(batch, length)" if rank == 2 else "(batch,)"
            raise ValueError(f"RAMba: {arg} must be a {doc} integer tensor, got {getattr(tokens, 'shape', tokens)!r}")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ValueError(f"RAMba: {arg} must hold integer token ids, got dtype {tokens.dtype}")
        if tokens.shape[0] == 0 or (rank == 2 and tokens.shape[1] == 0):
            raise ValueError(f"RAMba: {arg} must have batch and length >= 1, got shape {tuple(tokens.shape)}")
        if tokens.device != self.embedding.weight.device:
            raise ValueError(f"RAMba: {arg} is on {tokens.device} but the model is on {self.embedding.weight.device}")
        if input_checks_enabled(tokens.device) and (bool((tokens < 0).any()) or bool((tokens >= self.vocab_size).any())):
            raise ValueError(f"RAMba: {arg} must lie in [0, vocab_size={self.vocab_size})")

    def _check_state(self, state: Any, x: Tensor, where: str) -> None:
        local = self._local_blocks
        if (not isinstance(state, RAMbaState) or not isinstance(state.lower, tuple) or len(state.lower) != len(self.lower)
                or not isinstance(state.local, tuple) or len(state.local) != len(local)):
            raise ValueError(f"RAMba.{where}: state must be a RAMbaState(lower: {len(self.lower)} states, memory, "
                             f"local: {len(local)} states) as init_state returns, got {type(state).__name__}")
        check_hsa_state("RAMba", "state.memory", self.memory, state.memory, x)

    # -- whole sequences --------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        state: RAMbaState | None = None,
        return_state: bool = False,
        lengths: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, RAMbaState]:
        """input_ids (batch, length) -> logits (batch, length, vocab_size); with ``return_state`` also the
        state that ``state=`` or ``step`` continue from. ``lengths`` (batch,) marks right padding."""
        self._check_tokens(input_ids, "input_ids", 2)
        if lengths is not None:
            lengths = check_lengths(lengths, input_ids, "RAMba")
        x = self.embedding(input_ids)
        if state is not None:
            self._check_state(state, x, "forward")
        lower_states, local_states = [], []
        with input_checks(False):  # the tokens were checked once, above
            for i, block in enumerate(self.lower):
                x, s = block(x, None if state is None else state.lower[i], return_state, lengths)
                lower_states.append(s)
            memory = state.memory if state is not None else self.memory.init_state(x.shape[0], x.device, x.dtype)
            offset = state_length(memory, self.chunk_size)
            memory = self.memory.extend(memory, x)
            selection_q = self._selection(x)
            for block in self.upper:
                if isinstance(block, HSABlock):
                    x = block(x, memory, selection_q, offset)
                else:
                    j = len(local_states)
                    x, s = block(x, None if state is None else state.local[j], return_state, lengths)
                    local_states.append(s)
        logits = self.lm_head(self.norm_f(x))
        if not return_state:
            return logits
        return logits, RAMbaState(tuple(lower_states), memory, tuple(local_states))

    # -- one token at a time ----------------------------------------------------------------------
    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> RAMbaState:
        """The state of a fresh stream (on the parameters' device and dtype unless given)."""
        check_int("RAMba.init_state", "batch_size", batch_size)
        device = torch.device(device) if device is not None else self.embedding.weight.device
        dtype = dtype if dtype is not None else self.embedding.weight.dtype
        return RAMbaState(
            tuple(b.mixer.init_state(batch_size, device=device, dtype=dtype) for b in self.lower),
            self.memory.init_state(batch_size, device, dtype),
            tuple(b.mixer.init_state(batch_size, device=device, dtype=dtype) for b in self._local_blocks),
        )

    def step(self, token: Tensor, state: RAMbaState) -> tuple[Tensor, RAMbaState]:
        """token (batch,) -> logits (batch, vocab_size) for the next token, and the next state."""
        self._check_tokens(token, "token", 1)
        x = self.embedding(token)
        self._check_state(state, x[:, None], "step")
        lower_states, local_states = [], []
        with input_checks(False):
            for block, s in zip(self.lower, state.lower):
                x, s = block.step(x, s)
                lower_states.append(s)
            lower_out = x  # what the memory encodes
            position = state_length(state.memory, self.chunk_size)
            selection_q = self._selection(lower_out)
            for block in self.upper:
                if isinstance(block, HSABlock):  # reads the chunks complete before this token
                    x = block.step(x, state.memory, selection_q, position)
                else:
                    x, s = block.step(x, state.local[len(local_states)])
                    local_states.append(s)
            memory = self.memory.extend(state.memory, lower_out[:, None])
        return self.lm_head(self.norm_f(x)), RAMbaState(tuple(lower_states), memory, tuple(local_states))

    # -- generation (GenerationMixin.generate: prefill by forward, then unchecked steps) ------------------------
    def _prefill(self, input_ids: Tensor) -> tuple[Tensor, RAMbaState]:
        logits, state = self.forward(input_ids, return_state=True)
        return logits[:, -1], state

    def _decode(self, token: Tensor, state: RAMbaState) -> tuple[Tensor, RAMbaState]:
        return self.step(token, state)


def _causal_layer(arg: str, name: str, args: dict[str, Any] | None, d_model: int) -> SequenceLayer:
    if not isinstance(name, str):
        raise ValueError(f"RAMba: {arg} must be a registered layer name, got {name!r}")
    if args is not None and not isinstance(args, dict):
        raise ValueError(f"RAMba: {arg}_args must be a dict of {name}'s arguments, got {args!r}")
    args = dict(args or {})
    if "d_model" in args:
        raise ValueError(f"RAMba: give d_model once, not inside {arg}_args")
    try:
        layer = build(name, d_model=d_model, **args)
    except ValueError as e:
        raise ValueError(f"RAMba: {arg}={name!r}: {e}") from e
    if not layer.causal:
        raise ValueError(f"RAMba: {arg}={name!r} with {args} is not causal")
    return layer
