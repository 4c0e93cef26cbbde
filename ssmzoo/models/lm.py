"""A causal language model from any registered causal layer: embedding, pre-norm residual blocks,
final RMSNorm and an LM head tied to the embedding (the Mamba LM of Gu & Dao, section 4.2, and
mamba-ssm's ``MambaLMHeadModel``); ``generate`` prefills with one ``forward`` and then decodes one
token at a time with the layers' ``step``, so each new token costs O(1) in the sequence length.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import build
from ..layers.base import SequenceLayer, check_lengths, input_checks, input_checks_enabled
from ..modules.rmsnorm import RMSNorm


class Block(nn.Module):
    """x + layer(RMSNorm(x)). Names (norm, mixer) follow mamba-ssm so its checkpoints load by name."""

    def __init__(self, mixer: SequenceLayer, d_model: int, norm_eps: float) -> None:
        super().__init__()
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer

    def forward(self, x: Tensor, state: Any, return_state: bool, lengths: Tensor | None) -> tuple[Tensor, Any]:
        if return_state or state is not None:
            y, state = self.mixer(self.norm(x), state=state, return_state=True, lengths=lengths)
        else:
            y = self.mixer(self.norm(x), lengths=lengths)
        return x + y, state

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        y_t, state = self.mixer.step(self.norm(x_t), state)
        return x_t + y_t, state


class LanguageModel(nn.Module):
    """Tokens (batch, length) -> next-token logits (batch, length, vocab_size).

    Args:
        vocab_size: number of tokens.
        d_model: width.
        n_layers: number of residual blocks.
        layer: registered name of a causal sequence layer ("mamba", "s4d", ...).
        layer_args: that layer's constructor arguments (d_model is added).
        norm_eps: epsilon of the RMSNorms.
        tie_embeddings: share the LM head's weight with the embedding.
        initializer_range: std of the embedding init.
        rescale_prenorm_residual: scale each block's output projection by 1/sqrt(n_layers) at init
            (GPT-2's scheme, used by mamba-ssm), so the residual stream does not grow with depth.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        layer: str = "mamba",
        layer_args: dict[str, Any] | None = None,
        norm_eps: float = 1e-5,
        tie_embeddings: bool = True,
        initializer_range: float = 0.02,
        rescale_prenorm_residual: bool = True,
    ) -> None:
        super().__init__()
        for arg, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_layers", n_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LanguageModel: {arg} must be a positive int, got {value!r}")
        layer_args = dict(layer_args or {})
        if "d_model" in layer_args:
            raise ValueError("LanguageModel: give d_model once, not inside layer_args")
        self.vocab_size, self.d_model, self.n_layers = vocab_size, d_model, n_layers
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList()
        for _ in range(n_layers):
            mixer = build(layer, d_model=d_model, **layer_args)
            if not mixer.causal:
                raise ValueError(f"LanguageModel: layer {layer!r} with {layer_args} is not causal")
            self.layers.append(Block(mixer, d_model, norm_eps))
        self.norm_f = RMSNorm(d_model, eps=norm_eps)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)

        nn.init.normal_(self.embedding.weight, std=initializer_range)
        if tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        if rescale_prenorm_residual:
            with torch.no_grad():
                for block in self.layers:
                    out_proj = getattr(block.mixer, "out_proj", None)
                    if isinstance(out_proj, nn.Linear):
                        out_proj.weight /= math.sqrt(n_layers)

    # -- whole sequences ----------------------------------------------------------------------
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
            bool((tokens < 0).any()) or bool((tokens >= self.vocab_size).any())
        ):
            raise ValueError(f"LanguageModel: {arg} must lie in [0, vocab_size={self.vocab_size})")

    def _check_state(self, state: Any, where: str) -> None:
        if not isinstance(state, (list, tuple)) or len(state) != self.n_layers:
            got = f"{type(state).__name__} of {len(state)}" if isinstance(state, (list, tuple)) else type(state).__name__
            raise ValueError(f"LanguageModel.{where}: state must be a list with one entry per layer "
                             f"({self.n_layers}), as init_state returns, got {got}")

    def forward(
        self,
        input_ids: Tensor,
        state: list[Any] | None = None,
        return_state: bool = False,
        lengths: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[Any]]:
        """input_ids (batch, length) -> logits (batch, length, vocab_size); with ``return_state``
        also the per-layer states, which ``state=`` or ``step`` continue from."""
        self._check_tokens(input_ids, "input_ids", 2)
        if state is not None:
            self._check_state(state, "forward")
        if lengths is not None:
            lengths = check_lengths(lengths, input_ids, "LanguageModel")
        x = self.embedding(input_ids)
        states = []
        with input_checks(False):  # the input was checked once, above; a layer's scan would cost a sync each
            for i, block in enumerate(self.layers):
                x, s = block(x, None if state is None else state[i], return_state, lengths)
                states.append(s)
        logits = self.lm_head(self.norm_f(x))
        return (logits, states) if return_state else logits

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

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Continue ``input_ids`` (batch, length) by ``max_new_tokens`` tokens; returns
        (batch, length + max_new_tokens). temperature 0 is greedy (argmax); top_k keeps the k most
        likely tokens, top_p the smallest set whose probability reaches p (nucleus sampling).
        Sampling draws from ``generator``, or one seeded with ``seed``."""
        self._check_tokens(input_ids, "input_ids", 2)
        if input_ids.shape[1] == 0:
            raise ValueError("LanguageModel.generate: input_ids must hold at least one token per sequence")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"LanguageModel.generate: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if temperature < 0:
            raise ValueError(f"LanguageModel.generate: temperature must be >= 0, got {temperature}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"LanguageModel.generate: top_k must be a positive int or None, got {top_k!r}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"LanguageModel.generate: top_p must lie in (0, 1], got {top_p}")
        if seed is not None and generator is not None:
            raise ValueError("LanguageModel.generate: give seed or generator, not both")
        if generator is None and seed is not None:
            generator = torch.Generator(device=input_ids.device).manual_seed(seed)

        logits, state = self.forward(input_ids, return_state=True)  # prefill
        next_logits = logits[:, -1]
        out = [input_ids]
        for i in range(max_new_tokens):
            token = self._sample(next_logits, temperature, top_k, top_p, generator)
            out.append(token[:, None])
            if i + 1 < max_new_tokens:
                next_logits, state = self.step(token, state)
        return torch.cat(out, dim=1)

    @staticmethod
    def _sample(
        logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator | None
    ) -> Tensor:
        if temperature == 0:
            return logits.argmax(-1)
        logits = logits.float() / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            # drop a token when the tokens ranked above it already reach top_p; the top one always stays
            drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]
