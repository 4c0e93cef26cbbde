"""A causal language model from any registered causal layer: embedding, pre-norm residual blocks (the layer,
optionally followed by a gated MLP), final RMSNorm and an LM head tied to the embedding (the Mamba LM of
Gu & Dao, section 4.2, and mamba-ssm's ``MambaLMHeadModel``).

``generate`` (``generation.py``) prefills with one ``forward`` and then decodes one token at a time with the
layers' ``step``, so each new token costs O(1) in the sequence length; ``from_pretrained`` /
``save_pretrained`` (``pretrained.py``) read and write Hugging Face and mamba-ssm checkpoint folders.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import build
from ..layers.base import SequenceLayer, check_lengths, input_checks, input_checks_enabled
from ..layers.mamba import Mamba
from ..modules.mlp import MLP
from ..modules.rmsnorm import RMSNorm
from ..ops import mamba_lm_step as lm_step_op
from ..ops.mamba_lm_step import MambaLMStepWeights
from .generation import GenerationMixin

# Keyword arguments of a packed batch's document boundaries, passed to the layers whose forward takes them.
PACKING = ("seq_idx", "cu_seqlens")


class Block(nn.Module):
    """x + layer(RMSNorm(x)), then x + MLP(RMSNorm(x)) when the block has an MLP. Names (norm, mixer, norm2, mlp)
    follow mamba-ssm so its checkpoints load by name."""

    def __init__(self, mixer: SequenceLayer, d_model: int, norm_eps: float, d_intermediate: int) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer
        if d_intermediate:  # mamba-ssm's GatedMLP: fc1 -> [y ‖ gate], y · SiLU(gate), fc2 (our up, down)
            self.norm2 = RMSNorm(d_model, eps=norm_eps)
            self.mlp = MLP(d_model, d_intermediate, activation="silu", gated=True, bias=False)
        else:
            self.norm2 = self.mlp = None
        accepted = inspect.signature(mixer.forward).parameters
        self.packing = tuple(k for k in PACKING if k in accepted)

    def forward(self, x: Tensor, state: Any, return_state: bool, lengths: Tensor | None,
                packing: dict[str, Tensor]) -> tuple[Tensor, Any]:
        extras = {k: packing[k] for k in self.packing if k in packing}
        if return_state or state is not None:
            y, state = self.mixer(self.norm(x), state=state, return_state=True, lengths=lengths, **extras)
        else:
            y = self.mixer(self.norm(x), lengths=lengths, **extras)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x, state

    def step(self, x_t: Tensor, state: Any, checked: bool = True) -> tuple[Tensor, Any]:
        """One token; ``checked=False`` skips the layer's state checks (generation, from its own prefill)."""
        y_t, state = (self.mixer.step if checked else self.mixer._step)(self.norm(x_t), state)
        x_t = x_t + y_t
        if self.mlp is not None:
            x_t = x_t + self.mlp(self.norm2(x_t))
        return x_t, state


class LanguageModel(GenerationMixin, nn.Module):
    """Tokens (batch, length) -> next-token logits (batch, length, vocab_size).

    Args:
        vocab_size: number of tokens (under the ``ssmzoo`` command: from the datamodule).
        d_model: width.
        n_layers: number of residual blocks.
        layer: registered name of a causal sequence layer ("mamba", "s4d", "s4", "companion", "neural_memory", ...).
        layer_args: that layer's constructor arguments (d_model is added).
        d_intermediate: hidden width of a gated (SwiGLU) MLP after each layer (0: none, as in Mamba).
        norm_eps: epsilon of the RMSNorms.
        tie_embeddings: share the LM head's weight with the embedding.
        initializer_range: std of the embedding init.
        rescale_prenorm_residual: scale each block's output projections (the layer's ``out_proj``, the MLP's
            ``down``) by 1/sqrt(residuals per block · n_layers) at init (GPT-2's scheme, used by mamba-ssm),
            so the residual stream does not grow with depth.
        pad_vocab_size_multiple: round the embedding and head up to a multiple of this (mamba-ssm pads 50,277
            GPT-NeoX tokens to 50,280); the extra logits are never targets.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        layer: str = "mamba",
        layer_args: dict[str, Any] | None = None,
        d_intermediate: int = 0,
        norm_eps: float = 1e-5,
        tie_embeddings: bool = True,
        initializer_range: float = 0.02,
        rescale_prenorm_residual: bool = True,
        pad_vocab_size_multiple: int = 1,
    ) -> None:
        super().__init__()
        for arg, value, low in (("vocab_size", vocab_size, 1), ("d_model", d_model, 1), ("n_layers", n_layers, 1),
                                ("d_intermediate", d_intermediate, 0), ("pad_vocab_size_multiple", pad_vocab_size_multiple, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"LanguageModel: {arg} must be an int >= {low}, got {value!r}")
        if not isinstance(layer, str):
            raise ValueError(f"LanguageModel: layer must be a registered layer name, got {layer!r}")
        layer_args = dict(layer_args or {})
        if "d_model" in layer_args:
            raise ValueError("LanguageModel: give d_model once, not inside layer_args")
        # What save_pretrained writes and from_pretrained rebuilds from (the constructor's arguments).
        self.config = {
            "vocab_size": vocab_size, "d_model": d_model, "n_layers": n_layers, "layer": layer,
            "layer_args": layer_args, "d_intermediate": d_intermediate, "norm_eps": norm_eps,
            "tie_embeddings": tie_embeddings, "initializer_range": initializer_range,
            "rescale_prenorm_residual": rescale_prenorm_residual, "pad_vocab_size_multiple": pad_vocab_size_multiple,
        }
        self.vocab_size, self.d_model, self.n_layers, self.layer = vocab_size, d_model, n_layers, layer
        padded = math.ceil(vocab_size / pad_vocab_size_multiple) * pad_vocab_size_multiple
        self.embedding = nn.Embedding(padded, d_model)
        self.layers = nn.ModuleList()
        for _ in range(n_layers):
            mixer = build(layer, d_model=d_model, **layer_args)
            if not mixer.causal:
                raise ValueError(f"LanguageModel: layer {layer!r} with {layer_args} is not causal")
            self.layers.append(Block(mixer, d_model, norm_eps, d_intermediate))
        self.norm_f = RMSNorm(d_model, eps=norm_eps)
        self.lm_head = nn.Linear(d_model, padded, bias=False)
        # Backend of the mamba_lm_step op that generate decodes with (Mamba stacks; None: $SSMZOO_BACKEND or auto).
        self.decode_backend: str | None = None

        nn.init.normal_(self.embedding.weight, std=initializer_range)
        if tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        if rescale_prenorm_residual:
            scale = math.sqrt((2 if d_intermediate else 1) * n_layers)
            with torch.no_grad():
                for block in self.layers:
                    for proj in (getattr(block.mixer, "out_proj", None), getattr(block.mlp, "down", None)):
                        if isinstance(proj, nn.Linear):
                            proj.weight /= scale

    # -- checks ------------------------------------------------------------------------------
    def _check_tokens(self, tokens: Tensor, arg: str, rank: int) -> None:
        """Shape and dtype always; the id range (a value check) under the rule of ssmzoo.layers.base."""
        if not isinstance(tokens, Tensor) or tokens.dim() != rank:
            shape = getattr(tokens, "shape", None)
            doc = "(batch, length)" if rank == 2 else "(batch,)"
            raise ValueError(f"LanguageModel: {arg} must be a {doc} integer tensor, got shape {shape}")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ValueError(f"LanguageModel: {arg} must hold integer token ids, got dtype {tokens.dtype}")
        if tokens.shape[0] == 0 or (rank == 2 and tokens.shape[1] == 0):
            raise ValueError(f"LanguageModel: {arg} must have batch and length >= 1, got shape {tuple(tokens.shape)}")
        if tokens.device != self.embedding.weight.device:
            raise ValueError(f"LanguageModel: {arg} is on {tokens.device} but the model is on "
                             f"{self.embedding.weight.device}")
        if input_checks_enabled(tokens.device) and (
            bool((tokens < 0).any()) or bool((tokens >= self.embedding.num_embeddings).any())
        ):
            raise ValueError(f"LanguageModel: {arg} must lie in [0, vocab_size={self.embedding.num_embeddings})")

    def _check_state(self, state: Any, where: str) -> None:
        if not isinstance(state, (list, tuple)) or len(state) != self.n_layers:
            got = f"{type(state).__name__} of {len(state)}" if isinstance(state, (list, tuple)) else type(state).__name__
            raise ValueError(f"LanguageModel.{where}: state must be a list with one entry per layer "
                             f"({self.n_layers}), as init_state returns, got {got}")

    # -- whole sequences ----------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        state: list[Any] | None = None,
        return_state: bool = False,
        lengths: Tensor | None = None,
        seq_idx: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[Any]]:
        """input_ids (batch, length) -> logits (batch, length, vocab_size); with ``return_state`` also the
        per-layer states, which ``state=`` or ``step`` continue from. ``seq_idx`` (batch, length) /
        ``cu_seqlens`` mark packed documents (``ssmzoo.data.lm``); they reach the layers whose forward takes
        them (the others see the whole window, the separator token between documents)."""
        self._check_tokens(input_ids, "input_ids", 2)
        if state is not None:
            self._check_state(state, "forward")
        if lengths is not None:
            lengths = check_lengths(lengths, input_ids, "LanguageModel")
        packing = {k: v for k, v in (("seq_idx", seq_idx), ("cu_seqlens", cu_seqlens)) if v is not None}
        x, states = self._hidden(input_ids, state, return_state, lengths, packing)
        logits = self.lm_head(self.norm_f(x))
        return (logits, states) if return_state else logits

    def _hidden(self, input_ids: Tensor, state: list[Any] | None, return_state: bool, lengths: Tensor | None,
                packing: dict[str, Tensor]) -> tuple[Tensor, list[Any]]:
        """The last block's output (batch, length, d_model) and the per-layer states, from checked input."""
        x = self.embedding(input_ids)
        states = []
        with input_checks(False):  # the input was checked once; a layer's scan would cost a sync each
            for i, block in enumerate(self.layers):
                x, s = block(x, None if state is None else state[i], return_state, lengths, packing)
                states.append(s)
        return x, states

    # -- one token at a time ------------------------------------------------------------------
    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> list[Any]:
        return [block.mixer.init_state(batch_size, device=device, dtype=dtype) for block in self.layers]

    def step(self, token: Tensor, state: list[Any]) -> tuple[Tensor, list[Any]]:
        """token (batch,) -> logits (batch, vocab_size) for the next token, and the next state."""
        self._check_tokens(token, "token", 1)
        self._check_state(state, "step")
        x = self.embedding(token)
        new_state = []
        with input_checks(False):
            for block, s in zip(self.layers, state):
                x, s = block.step(x, s)
                new_state.append(s)
        return self.lm_head(self.norm_f(x)), new_state

    def _prefill(self, input_ids: Tensor) -> tuple[Tensor, list[Any]]:
        """The last position's logits and every layer's state. Generate needs no other output, so the final norm
        and the head run on the last position only, and so does the last block where its layer has a cheaper
        ``final_state`` (the other positions only advance its state). A long prompt runs in pieces of about the
        layers' ``prefill_rows`` (batch x length) rows, the state carried over."""
        rows = [block.mixer.prefill_rows for block in self.layers]
        batch, length = input_ids.shape
        piece = length if None in rows else max(1, min(rows) // batch)
        *blocks, last = self.layers
        split_last = type(last.mixer)._final_state is not SequenceLayer._final_state
        states: list[Any] = [None] * len(self.layers)
        with input_checks(False):  # the prompt was checked once
            for start in range(0, length, piece):
                x = self.embedding(input_ids[:, start:start + piece])
                for i, block in enumerate(blocks):
                    x, states[i] = block(x, states[i], True, None, {})
                if start + piece < length:  # no output of this piece is used: the last block only advances
                    states[-1] = last.mixer.final_state(last.norm(x), states[-1])
                    continue
                if split_last and x.shape[1] > 1:
                    states[-1] = last.mixer.final_state(last.norm(x[:, :-1]), states[-1])
                    x = x[:, -1:]
                x, states[-1] = last(x, states[-1], True, None, {})
        return self.lm_head(self.norm_f(x[:, -1])), states

    def _decode(self, token: Tensor, state: list[Any]) -> tuple[Tensor, list[Any]]:
        return self._decoder()(token, state)

    def _decoder(self) -> Callable[[Tensor, list[Any]], tuple[Tensor, list[Any]]]:
        """The unchecked one-token step generate loops over. A stack of plain Mamba blocks (no MLP) decodes
        through the ``mamba_lm_step`` op, the whole token in one call where its C++ backend serves
        (``decode_backend``); its weights are gathered here, once per generate call. Other stacks step
        block by block."""
        weights = self._mamba_lm_step_weights()
        if weights is None:
            return self._decode_blocks
        # A layer built to avoid the fused kernels ("unfused" / "reference") steps with the PyTorch formulas.
        pytorch_step = any(b.mixer.mamba_inner_backend in ("unfused", "reference") for b in self.layers)
        backend = self.decode_backend if self.decode_backend is not None else ("reference" if pytorch_step else None)
        lm_step_op.dispatch.check_name(backend, "LanguageModel", "decode_backend")
        return lm_step_op.mamba_lm_stepper(weights, backend=backend)  # chosen and prepared once per generate call

    def _decode_blocks(self, token: Tensor, state: list[Any]) -> tuple[Tensor, list[Any]]:
        x = self.embedding(token)
        new_state = []
        for block, s in zip(self.layers, state):
            x, s = block.step(x, s, checked=False)
            new_state.append(s)
        return self.lm_head(self.norm_f(x)), new_state

    def _mamba_lm_step_weights(self) -> MambaLMStepWeights | None:
        """The model's weights as the ``mamba_lm_step`` op takes them, or None when some block is not a plain
        Mamba block (another layer, an MLP, a grouped norm)."""
        if not all(type(b.mixer) is Mamba and b.mixer.causal and b.mlp is None and b.norm.group_size == self.d_model
                   and b.norm.eps == self.norm_f.eps for b in self.layers):
            return None
        return MambaLMStepWeights(
            self.embedding.weight, tuple(b.norm.weight for b in self.layers),
            tuple(b.mixer.step_weights() for b in self.layers), self.norm_f.weight, self.lm_head.weight,
            self.norm_f.eps)

    # -- checkpoints ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None) -> LanguageModel:
        """Load a local checkpoint folder (no download): a Hugging Face Mamba / Mamba-2 folder (config.json with
        ``model_type``, model.safetensors or pytorch_model.bin), a mamba-ssm one (config.json with ``d_model``,
        ``n_layer``, ``ssm_cfg``; pytorch_model.bin), or one written by :meth:`save_pretrained`."""
        from .pretrained import load_pretrained

        return load_pretrained(path, dtype=dtype, device=device)

    def save_pretrained(self, path: str | Path, format: str | None = None) -> Path:
        """Write config.json and the weights to the folder ``path``. ``format`` (None: the first that fits):
        ``"mamba"``, Hugging Face's ``MambaForCausalLM`` layout (model.safetensors; transformers loads it too),
        for Mamba models; ``"mamba_ssm.Mamba1"``, mamba-ssm's (pytorch_model.bin); ``"ssmzoo"``, any layer."""
        from .pretrained import save_pretrained

        return save_pretrained(self, path, format)
