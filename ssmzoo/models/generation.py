"""Autoregressive generation shared by the language models: prefill the prompt with one ``forward``, then
one ``step`` per new token, so each token costs the same whatever the length so far (plus an attention
cache where a model has one).

``generate`` takes the arguments Hugging Face's and mamba-ssm's users type: ``max_length`` (prompt
included) or ``max_new_tokens``, ``do_sample`` (greedy otherwise), ``temperature``, ``top_k`` (0: off),
``top_p`` (0 or 1: off), ``eos_token_id`` and a ``streamer`` (an object with ``put``/``end``, as
transformers' ``TextStreamer``, or any callable taking each new token).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layers.base import input_checks


def sample_next(
    logits: Tensor, do_sample: bool, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> Tensor:
    """The next token (batch,) from logits (batch, vocab): argmax, or a draw from softmax(logits / temperature)
    restricted to the ``top_k`` most likely tokens and to the smallest set whose probability reaches ``top_p``
    (the most likely token always stays)."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)[:, 0]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class GenerationMixin:
    """``generate`` for a model with ``vocab_size``, ``_check_tokens(tokens, arg, rank)``, ``_prefill(input_ids) -> (logits of
    the last position (batch, vocab), state)`` and ``_decode(token (batch,), state) -> (logits, state)``, the
    unchecked step (the state comes from the prefill)."""

    def _prefill(self, input_ids: Tensor) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def _decode(self, token: Tensor, state: Any) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def _decoder(self) -> Callable[[Tensor, Any], tuple[Tensor, Any]]:
        """The step ``generate`` calls per token: ``_decode`` unless a model prepares a faster one per call."""
        return self._decode

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_length: int | None = None,
        max_new_tokens: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.0,
        eos_token_id: int | Sequence[int] | None = None,
        streamer: Any = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Continue ``input_ids`` (batch, length); returns (batch, length + generated) token ids.

        Args:
            max_length: total length, prompt included; or
            max_new_tokens: tokens to add (give one of the two).
            do_sample: draw tokens (else greedy: the argmax at every step).
            temperature: divides the logits before sampling (> 0).
            top_k: sample among the k most likely tokens (0: all).
            top_p: nucleus sampling, the smallest set of tokens whose probability reaches p (0 or 1: off).
            eos_token_id: id(s) ending a sequence; a finished sequence is padded with the first of them and
                generation stops when every sequence has finished.
            streamer: ``streamer.put(ids)`` with the prompt (on the CPU), then each new token, then
                ``streamer.end()`` (transformers' streamers); or a callable called with each new token (batch,).
            seed, generator: the random source of sampling (a generator seeded with ``seed``, or this one).
        """
        name = f"{type(self).__name__}.generate"
        self._check_tokens(input_ids, "input_ids", 2)
        prompt = input_ids.shape[1]
        if (max_length is None) == (max_new_tokens is None):
            raise ValueError(f"{name}: give max_length (prompt included) or max_new_tokens, exactly one, got "
                             f"max_length={max_length!r}, max_new_tokens={max_new_tokens!r}")
        if max_length is not None:
            if not _is_int(max_length) or max_length < 1:
                raise ValueError(f"{name}: max_length must be an int >= 1, got {max_length!r}")
            if max_length <= prompt:  # Hugging Face's generate warns and returns the prompt: a silent no-op
                raise ValueError(f"{name}: max_length={max_length} counts the prompt, which already has {prompt} "
                                 f"tokens, so there is nothing to generate; give max_length > {prompt}, or "
                                 "max_new_tokens for the number of tokens to add")
            new = max_length - prompt
        else:
            if not _is_int(max_new_tokens) or max_new_tokens < 0:
                raise ValueError(f"{name}: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
            new = max_new_tokens
        if not isinstance(do_sample, bool):
            raise ValueError(f"{name}: do_sample must be True or False, got {do_sample!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"{name}: temperature must be a number > 0, got {temperature!r}")
        if not _is_int(top_k) or top_k < 0:
            raise ValueError(f"{name}: top_k must be an int >= 0 (0: off), got {top_k!r}")
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 <= top_p <= 1:
            raise ValueError(f"{name}: top_p must lie in [0, 1] (0 or 1: off), got {top_p!r}")
        eos = [eos_token_id] if _is_int(eos_token_id) else eos_token_id
        if eos is not None and (not isinstance(eos, (list, tuple)) or not eos or not all(_is_int(e) for e in eos)):
            raise ValueError(f"{name}: eos_token_id must be an int, a non-empty list of ints or None, got {eos_token_id!r}")
        vocab = getattr(self, "vocab_size", None)
        if eos is not None and _is_int(vocab):
            # an id outside the vocabulary is never generated (and the first pads finished rows, so it would be
            # fed back to the model)
            outside = [e for e in eos if not 0 <= e < vocab]
            if outside:
                raise ValueError(f"{name}: eos_token_id must lie in the vocabulary [0, {vocab}), got "
                                 f"{outside[0] if _is_int(eos_token_id) else eos_token_id!r}")
        put: Callable[[Tensor], Any] | None = getattr(streamer, "put", None)
        if streamer is not None and not callable(put) and not callable(streamer):
            raise ValueError(f"{name}: streamer must have put()/end() or be callable, got {type(streamer).__name__}")
        if seed is not None and generator is not None:
            raise ValueError(f"{name}: give seed or generator, not both")
        if seed is not None:
            generator = torch.Generator(device=input_ids.device).manual_seed(seed)

        if callable(put):
            put(input_ids.cpu())
        out = [input_ids]
        finished = None
        if eos is not None:
            eos_ids = torch.tensor(eos, device=input_ids.device)
            finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        with input_checks(False):  # the prompt was checked once, above
            if new:
                logits, state = self._prefill(input_ids)
                decode = self._decoder()
            for i in range(new):
                token = sample_next(logits, do_sample, temperature, top_k, top_p, generator)
                if finished is not None:
                    token = torch.where(finished, eos_ids[0], token)
                    finished = finished | torch.isin(token, eos_ids)
                out.append(token[:, None])
                if callable(put):
                    put(token.cpu())
                elif streamer is not None:
                    streamer(token)
                if i + 1 == new or (finished is not None and bool(finished.all())):
                    break
                logits, state = decode(token, state)
        if callable(getattr(streamer, "end", None)):
            streamer.end()
        return torch.cat(out, dim=1)
