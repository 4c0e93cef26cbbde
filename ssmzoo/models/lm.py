"""The causal language model of ssmzoo: embedding, a stack of pre-norm residual blocks, final RMSNorm and an LM
head tied to the embedding (the Mamba LM of Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", arXiv 2312.00752, section 4.2, and mamba-ssm's ``MambaLMHeadModel``).

The stack is a *pattern*: any registered causal layers, each in a :class:`Block` (x + layer(RMSNorm(x)), then
optionally x + MLP(RMSNorm(x))), so one class builds a Mamba LM, a hybrid of Mamba-2 and attention, RAMba
(``ramba.py``) and the Titans models (``titans.py``). A pattern entry is a dict:

    {"layer": "mamba2", "args": {...}, "mlp": 512, "repeat": 4}     # a block of a registered layer
    {"mlp": 512, "mlp_gated": False, "mlp_activation": "relu2"}        # a block that is an MLP alone
    {"memory": "chunks", "args": {...}}                                # a shared memory of the stream here
    {"read": "hsa", "args": {...}, "mlp": 512}                         # a block reading the memory below it

Optional keys of a block: ``mlp`` (hidden width of its MLP; default the model's ``d_intermediate``, 0: none),
``mlp_gated`` (SwiGLU, default True), ``mlp_activation`` ("silu"; "relu2" is the squared ReLU), ``mlp_bias``
(False), ``mlp_multipliers`` ((gate, output) scalars of the MLP, µP; default (1, 1)), ``norm`` (pre-norm, default
True; a layer that normalises its own input sets False), ``shared_block`` (below) and ``repeat`` (that many blocks
alike). A shared memory (RAMba's chunk memory) records the residual stream where it stands and every ``read`` block
above it reads it; it changes no token itself.

What the hybrid checkpoints need (``convert_bamba.py``, ``convert_nemotron_h.py``, ``convert_falcon_h1.py``,
``convert_zamba2.py``) is said with these parts:

- attention is a registered layer like any other: ``"attention"`` (``layers/attention.py``: full causal attention,
  grouped KV heads, rotary as the checkpoint has it, partial or none, a KV cache as its state);
- an MLP alone is a block of its own (the ``mlp`` entry above: x + MLP(norm(x)); Nemotron-H's squared-ReLU blocks);
- layers side by side in one block are the registered layer ``"parallel"`` (``layers/parallel.py``), the sum of its
  layers, each with an input and an output multiplier (Falcon-H1: Mamba-2 beside attention);
- µP multipliers (Falcon-H1): the model's ``embedding_multiplier`` (on the embedding's output) and
  ``lm_head_multiplier`` (on the logits), a block's ``mlp_multipliers``, ``parallel``'s per-layer multipliers,
  Mamba-2's ``in_proj_multipliers`` and attention's ``scale`` (which takes the key multiplier);
- shared blocks (Zamba2): the model's ``shared_blocks`` is a list of :class:`~.shared_block.SharedTransformer`
  arguments; a layer block with ``"shared_block": k`` computes x + mixer(norm(x + proj(T_k(x, e)))) where T_k is
  ``shared_blocks[k]`` (weights stored once, reused at every depth naming k) reading [x ‖ the token embedding e],
  and ``proj`` and T_k's low-rank adapters are this block's own (``shared_block.py``). Each use keeps its own
  attention cache in the block's state.

``generate`` (``generation.py``) prefills with ``forward`` and decodes one token at a time with the layers'
``step`` (or a fused decoder the first layer's class offers for the whole stack: ``SequenceLayer.stack_decoder``);
``from_pretrained`` / ``save_pretrained`` (``pretrained.py``) read and write Hugging Face and mamba-ssm folders.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import Segments, build, shared_memories
from ..layers.base import (
    DecodeBlock,
    DecodeStack,
    MemoryReader,
    SequenceLayer,
    SharedMemory,
    StackDecoder,
    check_lengths,
    input_checks,
    input_checks_enabled,
)
from ..layers.packing import forward_each_document
from ..modules.checks import check_bool, check_float, check_int
from ..modules.mlp import MLP
from ..modules.quantized import MODES as QUANTIZE_MODES
from ..modules.quantized import QuantizedLinear, linear_matrix
from ..modules.rmsnorm import RMSNorm
from .generation import GenerationMixin
from .shared_block import SharedTransformer

_MLP_KEYS = {"mlp", "mlp_gated", "mlp_activation", "mlp_bias", "mlp_multipliers"}
_BLOCK_KEYS = _MLP_KEYS | {"norm", "repeat"}
_ENTRY_KEYS = {"layer": {"layer", "args", "shared_block"} | _BLOCK_KEYS, "read": {"read", "args"} | _BLOCK_KEYS,
               "memory": {"memory", "args"}, "mlp": _MLP_KEYS | {"repeat"}}


class Block(nn.Module):
    """x + mixer(RMSNorm(x)), then x + MLP(RMSNorm(x)) when the block has an MLP. Names (norm, mixer, norm2, mlp)
    follow mamba-ssm, so its checkpoints load by name.

    The mixer is a causal :class:`SequenceLayer`, or a :class:`MemoryReader` that reads the shared memory of
    the stack below it (``shared``). With ``shared_block`` (a :class:`SharedTransformer` the model owns), the
    mixer reads x + proj(T(x, e)) instead of x (Zamba2), e being the token embedding; ``shared_use`` holds this
    block's proj and adapters, and the block's state is (the mixer's state, T's attention cache)."""

    def __init__(self, mixer: nn.Module, d_model: int, norm_eps: float, mlp: int = 0, mlp_gated: bool = True,
                 mlp_activation: str = "silu", norm: bool = True, mlp_bias: bool = False,
                 mlp_multipliers: tuple[float, float] = (1.0, 1.0),
                 shared_block: SharedTransformer | None = None, norm_unit_offset: bool = False) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=norm_eps, unit_offset=norm_unit_offset) if norm else None
        self.mixer = mixer
        if mlp:  # mamba-ssm's GatedMLP: fc1 -> [y ‖ gate], y · SiLU(gate), fc2 (our up, down)
            self.norm2 = RMSNorm(d_model, eps=norm_eps, unit_offset=norm_unit_offset)
            self.mlp = MLP(d_model, mlp, activation=mlp_activation, gated=mlp_gated, bias=mlp_bias,
                           gate_multiplier=mlp_multipliers[0], output_multiplier=mlp_multipliers[1])
        else:
            self.norm2 = self.mlp = None
        self.reads_memory = isinstance(mixer, MemoryReader)
        # The shared block is the model's (registered there once): held here without registering it again.
        self._shared_block = [shared_block] if shared_block is not None else []
        self.shared_use = shared_block.new_use() if shared_block is not None else None

    @property
    def shared_block(self) -> SharedTransformer | None:
        return self._shared_block[0] if self._shared_block else None

    @property
    def prefill_rows(self) -> int | None:
        return self.mixer.prefill_rows if isinstance(self.mixer, SequenceLayer) else None

    def _normed(self, x: Tensor) -> Tensor:
        return x if self.norm is None else self.norm(x)

    def _mlp(self, x: Tensor) -> Tensor:
        return x if self.mlp is None else x + self.mlp(self.norm2(x))

    def _mixer_input(self, x: Tensor, state: Any, embedding: Tensor | None) -> tuple[Tensor, Any, Any]:
        """norm(x), or norm(x + proj(T(x, e))) with a shared block; the mixer's state and T's next cache."""
        if self.shared_block is None:
            return self._normed(x), state, None
        mixer_state, cache = state if state is not None else (None, None)
        t, cache = self.shared_block(x, embedding, self.shared_use, cache)
        return self._normed(x + t), mixer_state, cache

    def forward(self, x: Tensor, state: Any, return_state: bool, lengths: Tensor | None,
                segments: Segments | None, shared: Any = None, embedding: Tensor | None = None) -> tuple[Tensor, Any]:
        """``embedding``: the token embedding e (batch, length, d_model), which a shared block reads."""
        h, state, cache = self._mixer_input(x, state, embedding)
        if self.reads_memory:
            y = self.mixer.read(h, shared)
        elif return_state or state is not None:
            y, state = self.mixer(h, state=state, return_state=True, lengths=lengths, segments=segments)
        else:
            y = self.mixer(h, lengths=lengths, segments=segments)
        if self.shared_block is not None:
            state = (state, cache)
        return self._mlp(x + y), state

    def step(self, x_t: Tensor, state: Any, check_state: bool = True, shared: Any = None,
             embedding: Tensor | None = None) -> tuple[Tensor, Any]:
        """One token; ``check_state=False`` skips the layer's state check (generation, from its own prefill)."""
        if self.shared_block is not None:
            h, mixer_state, cache = self._mixer_input(x_t[:, None], state, embedding[:, None])
            y_t, mixer_state = self.mixer.step(h[:, 0], mixer_state, check_state=check_state)
            return self._mlp(x_t + y_t), (mixer_state, cache)
        h = self._normed(x_t)
        if self.reads_memory:
            y_t = self.mixer.read_step(h, shared)
        else:
            y_t, state = self.mixer.step(h, state, check_state=check_state)
        return self._mlp(x_t + y_t), state

    def init_state(self, batch_size: int, device: torch.device | str | None, dtype: torch.dtype | None) -> Any:
        if self.reads_memory:
            return None
        state = self.mixer.init_state(batch_size, device=device, dtype=dtype)
        if self.shared_block is not None:
            state = (state, self.shared_block.init_state(batch_size, device, dtype))
        return state


class MLPBlock(nn.Module):
    """x + MLP(RMSNorm(x)): a block that is an MLP alone (Nemotron-H's "-" blocks); stateless. Names: norm, mlp."""

    mixer = None
    reads_memory = False
    shared_block = None
    prefill_rows = None

    def __init__(self, d_model: int, norm_eps: float, mlp: int, mlp_gated: bool = True, mlp_activation: str = "silu",
                 mlp_bias: bool = False, mlp_multipliers: tuple[float, float] = (1.0, 1.0),
                 norm_unit_offset: bool = False) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=norm_eps, unit_offset=norm_unit_offset)
        self.mlp = MLP(d_model, mlp, activation=mlp_activation, gated=mlp_gated, bias=mlp_bias,
                       gate_multiplier=mlp_multipliers[0], output_multiplier=mlp_multipliers[1])

    def forward(self, x: Tensor, state: Any, return_state: bool, lengths: Tensor | None,
                segments: Segments | None, shared: Any = None, embedding: Tensor | None = None) -> tuple[Tensor, Any]:
        return x + self.mlp(self.norm(x)), None

    def step(self, x_t: Tensor, state: Any, check_state: bool = True, shared: Any = None,
             embedding: Tensor | None = None) -> tuple[Tensor, Any]:
        return x_t + self.mlp(self.norm(x_t)), None

    def init_state(self, batch_size: int, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        return None


def _expand_pattern(pattern: Any, d_intermediate: int, n_shared_blocks: int = 0) -> list[dict[str, Any]]:
    """The pattern's entries checked, defaults filled and ``repeat`` unrolled: one dict per stack element."""
    if not isinstance(pattern, (list, tuple)) or not pattern:
        raise ValueError(f"LanguageModel: pattern must be a non-empty list of entries such as "
                         f"{{'layer': 'mamba', 'args': {{...}}}}, got {pattern!r}")
    out = []
    for i, entry in enumerate(pattern):
        where = f"LanguageModel: pattern[{i}]"
        kinds = [k for k in ("layer", "read", "memory") if isinstance(entry, dict) and k in entry]
        if not kinds and isinstance(entry, dict) and "mlp" in entry:
            kinds = ["mlp"]  # a block that is an MLP alone
        if len(kinds) != 1:
            raise ValueError(f"{where} must be a dict with exactly one of 'layer', 'read' or 'memory' (or 'mlp' "
                             f"alone, for an MLP block), got {entry!r}")
        kind = kinds[0]
        unknown = sorted(set(entry) - _ENTRY_KEYS[kind])
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {unknown}; a {kind!r} entry takes "
                             f"{sorted(_ENTRY_KEYS[kind])}")
        if kind != "mlp" and not isinstance(entry[kind], str):
            raise ValueError(f"{where}: {kind} must be a name (str), got {entry[kind]!r}")
        args = entry.get("args") or {}
        if not isinstance(args, dict):
            raise ValueError(f"{where}: args must be a dict of {entry[kind]!r}'s arguments, got {args!r}")
        if "d_model" in args:
            raise ValueError(f"{where}: give d_model once, to the model, not inside args")
        spec = {"kind": kind, "name": entry[kind] if kind != "mlp" else "mlp", "args": dict(args)}
        if kind != "memory":
            spec["mlp"] = check_int(where, "mlp", entry.get("mlp", d_intermediate), minimum=1 if kind == "mlp" else 0)
            spec["mlp_gated"] = check_bool(where, "mlp_gated", entry.get("mlp_gated", True))
            spec["mlp_activation"] = entry.get("mlp_activation", "silu")
            spec["mlp_bias"] = check_bool(where, "mlp_bias", entry.get("mlp_bias", False))
            multipliers = entry.get("mlp_multipliers", (1.0, 1.0))
            if not isinstance(multipliers, (list, tuple)) or len(multipliers) != 2:
                raise ValueError(f"{where}: mlp_multipliers must be a pair (gate, output) of numbers, got {multipliers!r}")
            spec["mlp_multipliers"] = tuple(check_float(where, "mlp_multipliers", m) for m in multipliers)
        if kind in ("layer", "read"):
            spec["norm"] = check_bool(where, "norm", entry.get("norm", True))
        if kind == "layer":
            k = entry.get("shared_block")
            if k is not None:
                check_int(where, "shared_block", k, minimum=0)
                if k >= n_shared_blocks:
                    raise ValueError(f"{where}: shared_block={k} names no block of the model's shared_blocks "
                                     f"({n_shared_blocks} given)")
            spec["shared_block"] = k
        repeat = check_int(where, "repeat", entry.get("repeat", 1), minimum=0)
        out += [copy.deepcopy(spec) for _ in range(repeat)]
    if not out:
        raise ValueError("LanguageModel: the pattern has no element (every repeat is 0)")
    return out


class LanguageModel(GenerationMixin, nn.Module):
    """Tokens (batch, length) -> next-token logits (batch, length, vocab_size).

    Args:
        vocab_size: number of tokens (under the ``ssmzoo`` command: from the datamodule).
        d_model: width.
        n_layers: number of blocks of ``layer`` (the short form of a one-layer pattern); None with ``pattern``.
        layer: registered name of a causal sequence layer ("mamba", "mamba2", "s4d", "swa", ...).
        layer_args: that layer's constructor arguments (d_model is added).
        pattern: the stack as a list of entries (see the module docstring), instead of n_layers × layer.
        d_intermediate: hidden width of the gated (SwiGLU) MLP after each block's mixer (0: none, as in Mamba);
            a pattern entry's ``mlp`` overrides it.
        norm_eps: epsilon of the RMSNorms.
        tie_embeddings: share the LM head's weight with the embedding.
        initializer_range: std of the embedding init (None: nn.Embedding's own, N(0, 1)).
        rescale_prenorm_residual: scale each block's output projections (the mixer's ``out_proj``, the MLP's
            ``down``) by 1/sqrt(residual branches in the stack) at init (GPT-2's scheme, used by mamba-ssm),
            so the residual stream does not grow with depth.
        pad_vocab_size_multiple: round the embedding and head up to a multiple of this (mamba-ssm pads 50,277
            GPT-NeoX tokens to 50,280); the extra logits are never targets.
        embedding_multiplier: multiplies the embedding's output (µP; Falcon-H1).
        lm_head_multiplier: multiplies the logits (µP; Falcon-H1).
        shared_blocks: arguments of the :class:`~.shared_block.SharedTransformer` blocks that pattern entries
            name by index (``"shared_block": k``; Zamba2); d_model and norm_eps are the model's.
        norm_unit_offset: the blocks' norms and the final norm scale by (1 + weight) (Qwen3.5; ``RMSNorm``).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int | None = None,
        layer: str = "mamba",
        layer_args: dict[str, Any] | None = None,
        pattern: list[dict[str, Any]] | None = None,
        d_intermediate: int = 0,
        norm_eps: float = 1e-5,
        tie_embeddings: bool = True,
        initializer_range: float | None = 0.02,
        rescale_prenorm_residual: bool = True,
        pad_vocab_size_multiple: int = 1,
        embedding_multiplier: float = 1.0,
        lm_head_multiplier: float = 1.0,
        shared_blocks: list[dict[str, Any]] | None = None,
        norm_unit_offset: bool = False,
    ) -> None:
        super().__init__()
        for arg, value, low in (("vocab_size", vocab_size, 1), ("d_model", d_model, 1),
                                ("d_intermediate", d_intermediate, 0), ("pad_vocab_size_multiple", pad_vocab_size_multiple, 1)):
            check_int("LanguageModel", arg, value, minimum=low)
        check_bool("LanguageModel", "tie_embeddings", tie_embeddings)
        check_float("LanguageModel", "initializer_range", initializer_range, above=0.0, optional=True)
        check_float("LanguageModel", "norm_eps", norm_eps, above=0.0)
        check_bool("LanguageModel", "rescale_prenorm_residual", rescale_prenorm_residual)
        check_float("LanguageModel", "embedding_multiplier", embedding_multiplier)
        check_float("LanguageModel", "lm_head_multiplier", lm_head_multiplier)
        check_bool("LanguageModel", "norm_unit_offset", norm_unit_offset)
        if shared_blocks is not None and (not isinstance(shared_blocks, (list, tuple))
                                          or not all(isinstance(b, dict) for b in shared_blocks)):
            raise ValueError(f"LanguageModel: shared_blocks must be a list of dicts of SharedTransformer arguments, "
                             f"got {shared_blocks!r}")
        n_shared = len(shared_blocks or ())
        if pattern is None:
            if n_layers is None:
                raise ValueError("LanguageModel: give n_layers (blocks of `layer`) or a pattern")
            check_int("LanguageModel", "n_layers", n_layers)
            if not isinstance(layer, str):
                raise ValueError(f"LanguageModel: layer must be a registered layer name, got {layer!r}")
            if layer_args is not None and not isinstance(layer_args, dict):
                raise ValueError(f"LanguageModel: layer_args must be a dict of {layer!r}'s arguments, got {layer_args!r}")
            elements = _expand_pattern([{"layer": layer, "args": layer_args or {}, "repeat": n_layers}], d_intermediate,
                                       n_shared)
        else:
            if n_layers is not None or layer_args is not None:
                raise ValueError("LanguageModel: give either a pattern or n_layers/layer/layer_args, not both")
            elements = _expand_pattern(pattern, d_intermediate, n_shared)
        # What save_pretrained writes and from_pretrained rebuilds from (the constructor's arguments).
        self.config = {
            "vocab_size": vocab_size, "d_model": d_model, "n_layers": n_layers, "layer": layer,
            "layer_args": dict(layer_args) if layer_args is not None else None,
            "pattern": copy.deepcopy(pattern), "d_intermediate": d_intermediate, "norm_eps": norm_eps,
            "tie_embeddings": tie_embeddings, "initializer_range": initializer_range,
            "rescale_prenorm_residual": rescale_prenorm_residual, "pad_vocab_size_multiple": pad_vocab_size_multiple,
        }
        # The newer arguments are written only when used, so configs of models without them stay as they were.
        for arg, value, default in (("embedding_multiplier", embedding_multiplier, 1.0),
                                    ("lm_head_multiplier", lm_head_multiplier, 1.0),
                                    ("shared_blocks", copy.deepcopy(shared_blocks), None),
                                    ("norm_unit_offset", norm_unit_offset, False)):
            if value != default:
                self.config[arg] = value
        self.embedding_multiplier, self.lm_head_multiplier = float(embedding_multiplier), float(lm_head_multiplier)
        self.vocab_size, self.d_model = vocab_size, d_model
        padded = math.ceil(vocab_size / pad_vocab_size_multiple) * pad_vocab_size_multiple
        self.embedding = nn.Embedding(padded, d_model)
        self.shared_blocks = nn.ModuleList()
        for k, args in enumerate(shared_blocks or ()):
            if "d_model" in args or "norm_eps" in args:
                raise ValueError(f"LanguageModel: shared_blocks[{k}]: d_model and norm_eps are the model's; leave "
                                 "them out")
            try:
                self.shared_blocks.append(SharedTransformer(d_model, norm_eps=norm_eps, **args))
            except (ValueError, TypeError) as e:
                raise ValueError(f"LanguageModel: shared_blocks[{k}]: {e}") from e
        self.layers = nn.ModuleList(self._element(i, spec, d_model, norm_eps, elements, self.shared_blocks,
                                                  norm_unit_offset) for i, spec in enumerate(elements))
        self.n_layers = len(self.layers)
        self.norm_f = RMSNorm(d_model, eps=norm_eps, unit_offset=norm_unit_offset)
        self.lm_head = nn.Linear(d_model, padded, bias=False)
        # The backend the fused decoder is asked for (``stack_decoder``; None: $SSMZOO_BACKEND or auto).
        self.decode_backend: str | None = None

        if initializer_range is not None:
            nn.init.normal_(self.embedding.weight, std=initializer_range)
        if tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        if rescale_prenorm_residual:
            blocks = [e for e in self.layers if isinstance(e, (Block, MLPBlock))]
            scale = math.sqrt(sum((b.mixer is not None) + (b.mlp is not None) for b in blocks))
            with torch.no_grad():
                for block in blocks:
                    for proj in (getattr(block.mixer, "out_proj", None), getattr(block.mlp, "down", None)):
                        if isinstance(proj, nn.Linear):
                            proj.weight /= scale

    @staticmethod
    def _element(i: int, spec: dict[str, Any], d_model: int, norm_eps: float,
                 elements: list[dict[str, Any]], shared_blocks: nn.ModuleList,
                 norm_unit_offset: bool = False) -> nn.Module:
        where = f"LanguageModel: pattern element {i} ({spec['kind']} {spec['name']!r})"
        try:
            if spec["kind"] == "mlp":
                return MLPBlock(d_model, norm_eps, spec["mlp"], spec["mlp_gated"], spec["mlp_activation"],
                                spec["mlp_bias"], spec["mlp_multipliers"], norm_unit_offset)
            if spec["kind"] == "memory":
                return shared_memories.build_memory(spec["name"], d_model=d_model, **spec["args"])
            if spec["kind"] == "read":
                below = [e for e in elements[:i] if e["kind"] == "memory"]
                if not below:
                    raise ValueError("a read block needs a shared memory below it in the pattern")
                mixer = shared_memories.build_reader(spec["name"], below[-1]["args"], d_model=d_model, **spec["args"])
            else:
                mixer = build(spec["name"], d_model=d_model, **spec["args"])
                if not mixer.causal:
                    raise ValueError(f"the layer with {spec['args']} is not causal")
            shared = spec.get("shared_block")
            return Block(mixer, d_model, norm_eps, spec["mlp"], spec["mlp_gated"], spec["mlp_activation"], spec["norm"],
                         spec["mlp_bias"], spec["mlp_multipliers"], shared_blocks[shared] if shared is not None else None,
                         norm_unit_offset)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from e

    def _blocks(self) -> list[Block]:
        return [e for e in self.layers if isinstance(e, Block)]

    # -- checks ------------------------------------------------------------------------------
    def _check_tokens(self, tokens: Tensor, arg: str, rank: int) -> None:
        """Shape and dtype always; the id range (a value check) under the rule of ssmzoo.layers.base."""
        name = type(self).__name__
        if not isinstance(tokens, Tensor) or tokens.dim() != rank:
            shape = getattr(tokens, "shape", None)
            doc = "(batch, length)" if rank == 2 else "(batch,)"
            raise ValueError(f"{name}: {arg} must be a {doc} integer tensor, got shape {shape}")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ValueError(f"{name}: {arg} must hold integer token ids, got dtype {tokens.dtype}")
        if tokens.shape[0] == 0 or (rank == 2 and tokens.shape[1] == 0):
            raise ValueError(f"{name}: {arg} must have batch and length >= 1, got shape {tuple(tokens.shape)}")
        if tokens.device != self.embedding.weight.device:
            raise ValueError(f"{name}: {arg} is on {tokens.device} but the model is on {self.embedding.weight.device}")
        if input_checks_enabled(tokens.device) and (
            bool((tokens < 0).any()) or bool((tokens >= self.embedding.num_embeddings).any())
        ):
            raise ValueError(f"{name}: {arg} must lie in [0, vocab_size={self.embedding.num_embeddings})")

    def _check_state(self, state: Any, where: str) -> None:
        if not isinstance(state, (list, tuple)) or len(state) != self.n_layers:
            got = f"{type(state).__name__} of {len(state)}" if isinstance(state, (list, tuple)) else type(state).__name__
            raise ValueError(f"{type(self).__name__}.{where}: state must be a list with one entry per stack element "
                             f"({self.n_layers}), as init_state returns, got {got}")

    def _check_segments(self, segments: Any, input_ids: Tensor) -> None:
        name = type(self).__name__
        if not isinstance(segments, Segments):
            raise ValueError(f"{name}: segments must be a ssmzoo.Segments, got {type(segments).__name__}")
        if (segments.batch, segments.length) != tuple(input_ids.shape) or segments.device != input_ids.device:
            raise ValueError(f"{name}: segments describe a {(segments.batch, segments.length)} input on "
                             f"{segments.device}, but input_ids is {tuple(input_ids.shape)} on {input_ids.device}")

    # -- whole sequences ----------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        state: list[Any] | None = None,
        return_state: bool = False,
        lengths: Tensor | None = None,
        segments: Segments | None = None,
    ) -> Tensor | tuple[Tensor, list[Any]]:
        """input_ids (batch, length) -> logits (batch, length, vocab_size); with ``return_state`` also the
        per-element states, which ``state=`` or ``step`` continue from. ``lengths`` (batch,) marks right padding;
        ``segments`` marks packed documents (``ssmzoo.data.lm``'s windows), each computed as if alone, with
        per-document states."""
        self._check_tokens(input_ids, "input_ids", 2)
        if not isinstance(return_state, bool):
            raise ValueError(f"{type(self).__name__}: return_state must be True or False, got {return_state!r}")
        if state is not None:
            self._check_state(state, "forward")
        if lengths is not None:
            lengths = check_lengths(lengths, input_ids, type(self).__name__)
        if segments is not None:
            self._check_segments(segments, input_ids)
            if lengths is not None:
                raise ValueError(f"{type(self).__name__}: give lengths or segments, not both")
            if segments.unpacked:
                segments = None
        x = self._embed(input_ids)
        with input_checks(False):  # the input was checked once; a layer's scan would cost a sync each
            if segments is not None and (len(self.shared_blocks) or any(isinstance(e, SharedMemory) for e in self.layers)):
                # A shared memory reads the stream across its blocks, a shared block attends inside its own: the
                # whole stack runs each document alone.
                x, states = forward_each_document(self._stack, x, state, segments, return_state, type(self).__name__)
            else:
                x, states = self._stack(x, state, lengths, return_state, segments)
        logits = self._logits(x)
        return (logits, states) if return_state else logits

    def _embed(self, tokens: Tensor) -> Tensor:
        x = self.embedding(tokens)
        return x if self.embedding_multiplier == 1.0 else x * self.embedding_multiplier

    def _logits(self, x: Tensor) -> Tensor:
        logits = self.lm_head(self.norm_f(x))
        return logits if self.lm_head_multiplier == 1.0 else logits * self.lm_head_multiplier

    def _stack(self, x: Tensor, state: list[Any] | None, lengths: Tensor | None, return_state: bool,
               segments: Segments | None = None) -> tuple[Tensor, list[Any] | None]:
        """The last element's output (batch, length, d_model) and the per-element states, from checked input (x:
        the embedding, which shared blocks read again at every use)."""
        states: list[Any] = []
        shared, embedding = None, x
        for i, element in enumerate(self.layers):
            s = None if state is None else state[i]
            if isinstance(element, SharedMemory):
                shared, s = element(x, s)
            else:
                x, s = element(x, s, return_state, lengths, segments, shared, embedding)
            states.append(s)
        return x, (states if return_state else None)

    # -- one token at a time ------------------------------------------------------------------
    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> list[Any]:
        """The state of a fresh stream (on the parameters' device and dtype unless given)."""
        check_int(f"{type(self).__name__}.init_state", "batch_size", batch_size)
        device = torch.device(device) if device is not None else self.embedding.weight.device
        dtype = dtype if dtype is not None else self.embedding.weight.dtype
        return [e.init_state(batch_size, device=device, dtype=dtype) for e in self.layers]

    def step(self, token: Tensor, state: list[Any]) -> tuple[Tensor, list[Any]]:
        """token (batch,) -> logits (batch, vocab_size) for the next token, and the next state."""
        self._check_tokens(token, "token", 1)
        self._check_state(state, "step")
        return self._step(token, state, check_state=True)

    def _step(self, token: Tensor, state: list[Any], check_state: bool) -> tuple[Tensor, list[Any]]:
        x = embedding = self._embed(token)
        new_state, shared = [], None
        with input_checks(False):
            for element, s in zip(self.layers, state):
                if isinstance(element, SharedMemory):
                    shared, s = element.step(x, s, check_state=check_state)
                else:
                    x, s = element.step(x, s, check_state=check_state, shared=shared, embedding=embedding)
                new_state.append(s)
        return self._logits(x), new_state

    # -- generation (GenerationMixin.generate: prefill by forward, then unchecked steps) ------------------------
    def _prefill(self, input_ids: Tensor) -> tuple[Tensor, list[Any]]:
        """The last position's logits and every element's state. Generate needs no other output, so the final
        norm and the head run on the last position only, and so does the last block where its layer has a cheaper
        ``final_state`` (the other positions only advance its state). A long prompt runs in pieces of about the
        layers' ``prefill_rows`` (batch x length) rows, the state carried over."""
        # An MLP block takes any piece; a shared memory, the whole prompt.
        rows = [e.prefill_rows if isinstance(e, Block) else None for e in self.layers if not isinstance(e, MLPBlock)]
        batch, length = input_ids.shape
        piece = length if None in rows else max(1, min(rows, default=length * batch) // batch)
        *elements, last = self.layers
        split_last = (isinstance(last, Block) and last.mlp is None and isinstance(last.mixer, SequenceLayer)
                      and last.shared_block is None
                      and type(last.mixer)._final_state is not SequenceLayer._final_state)
        states: list[Any] = [None] * self.n_layers
        with input_checks(False):  # the prompt was checked once
            for start in range(0, length, piece):
                x = embedding = self._embed(input_ids[:, start:start + piece])
                shared = None
                for i, element in enumerate(elements):
                    if isinstance(element, SharedMemory):
                        shared, states[i] = element(x, states[i])
                    else:
                        x, states[i] = element(x, states[i], True, None, None, shared, embedding)
                if split_last and start + piece < length:  # no output of this piece is used: the last block advances
                    states[-1] = last.mixer.final_state(last._normed(x), states[-1])
                    continue
                if split_last and x.shape[1] > 1:
                    states[-1] = last.mixer.final_state(last._normed(x[:, :-1]), states[-1])
                    x = x[:, -1:]
                x, states[-1] = last(x, states[-1], True, None, None, shared, embedding)
        return self._logits(x[:, -1]), states

    def _decoder(self) -> StackDecoder:
        """The unchecked one-token step generate loops over: a fused decoder for the whole stack where the first
        layer's class offers one (``SequenceLayer.stack_decoder``; Mamba's runs the token in one C++ call), built
        once per generate call; else block by block."""
        stack = self.decode_stack()
        if stack is not None:
            decoder = type(stack.blocks[0].mixer).stack_decoder(stack)
            if decoder is not None:
                return decoder
        return self._decode

    def decode_stack(self) -> DecodeStack | None:
        """The model as a fused decoder sees it (``SequenceLayer.stack_decoder``), or None when some element is
        not a block of a sequence layer (a shared memory, a read, an MLP alone) or the model has what a
        :class:`DecodeStack` cannot say (multipliers of the embedding or the logits, shared blocks)."""
        blocks = self._blocks()
        if len(blocks) != self.n_layers or not all(isinstance(b.mixer, SequenceLayer) for b in blocks):
            return None
        if self.embedding_multiplier != 1.0 or self.lm_head_multiplier != 1.0 or len(self.shared_blocks):
            return None
        return DecodeStack(self.embedding.weight, tuple(DecodeBlock(b.norm, b.mixer, b.norm2, b.mlp) for b in blocks),
                           self.norm_f, linear_matrix(self.lm_head), self.decode_backend)

    def _decode(self, token: Tensor, state: list[Any]) -> tuple[Tensor, list[Any]]:
        return self._step(token, state, check_state=False)

    def quantize(self, mode: str) -> LanguageModel:
        """Store every linear layer's weight (the blocks' projections and the LM head; not the embedding, which
        decoding reads one row of) in fewer bytes, for decoding, where reading each weight once per token bounds
        the speed: ``"int8"`` (weight-only, symmetric, one float32 scale per output row) or ``"bf16"``. In place;
        returns the model. The model's forward then computes with the stored weights' values (in its own dtype),
        and generation, the fused decoders included, is exact to that forward. An inference transform: the
        stored weights are buffers, not parameters (a tied head is untied: the embedding keeps its float weight)."""
        if mode not in QUANTIZE_MODES:
            raise ValueError(f"LanguageModel.quantize: mode must be one of {', '.join(map(repr, QUANTIZE_MODES))}, "
                             f"got {mode!r}")
        for module in list(self.modules()):
            for name, child in list(module.named_children()):
                if type(child) is nn.Linear:
                    setattr(module, name, QuantizedLinear(child, mode))
        return self

    # -- checkpoints ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None) -> LanguageModel:
        """Load a local checkpoint folder (no download): a Hugging Face Mamba / Mamba-2 folder (config.json with
        ``model_type``, model.safetensors or pytorch_model.bin), a mamba-ssm one (config.json with ``d_model``,
        ``n_layer``, ``ssm_cfg``; pytorch_model.bin), or one written by :meth:`save_pretrained`."""
        return _CHECKPOINT_IO["load"](path, dtype=dtype, device=device)

    def save_pretrained(self, path: str | Path, format: str | None = None) -> Path:
        """Write config.json and the weights to the folder ``path``. ``format`` (None: the first that fits):
        ``"mamba"``, Hugging Face's ``MambaForCausalLM`` layout (model.safetensors; transformers loads it too),
        for Mamba models; ``"mamba_ssm.Mamba1"``, mamba-ssm's (pytorch_model.bin); ``"ssmzoo"``, any layer."""
        return _CHECKPOINT_IO["save"](self, path, format)


# Checkpoint folders are read and written by pretrained.py, whose format converters build this class: it plugs its
# two functions in here when ``ssmzoo.models`` is imported (models/__init__.py), so this module never imports it and
# the two form no import cycle.
_CHECKPOINT_IO: dict[str, Any] = {}


def register_checkpoint_io(load: Any, save: Any) -> None:
    """The functions behind :meth:`LanguageModel.from_pretrained` and :meth:`LanguageModel.save_pretrained`."""
    _CHECKPOINT_IO.update(load=load, save=save)
