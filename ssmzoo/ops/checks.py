"""Pieces of argument checks that several ops share; each op's ``inputs.py`` holds its one check function,
built from these. Every failure is a ``ValueError`` that names the op and the argument."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from .segments import Segments


def shape(t: Any) -> str:
    """``(2, 3, 4)`` for a tensor, else the type's name (for messages)."""
    return "(" + ", ".join(str(s) for s in t.shape) + ")" if isinstance(t, Tensor) else type(t).__name__


def floating(op: str, name: str, t: Any) -> Tensor:
    """``t`` must be a real floating tensor."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{op}: {name} must be a real floating tensor, got {t.dtype}")
    return t


def positive_int(op: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")


def boolean(op: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{op}: {name} must be a bool, got {value!r}")


def one_device(op: str, named: dict[str, Any], device: torch.device | None = None) -> None:
    """Every tensor in ``named`` (other entries skipped) on the device of the first one (or on ``device``)."""
    tensors = [(n, t) for n, t in named.items() if isinstance(t, Tensor)]
    if not tensors:
        return
    first, want = tensors[0][0], device if device is not None else tensors[0][1].device
    for name, t in tensors:
        if t.device != want:
            raise ValueError(f"{op}: {name} must be on {first}'s device {want}, got {t.device}")


def segments_of(op: str, segments: Any, batch: int, length: int, device: torch.device) -> Segments | None:
    """``segments`` must be None or a :class:`Segments` of the input's (batch, length) on its device."""
    if segments is None:
        return None
    if not isinstance(segments, Segments):
        raise ValueError(f"{op}: segments must be a ssmzoo.Segments (Segments.from_seq_idx / from_cu_seqlens / "
                         f"from_lengths), got {type(segments).__name__}")
    if (segments.batch, segments.length) != (batch, length):
        raise ValueError(f"{op}: segments describe a (batch, length) = {(segments.batch, segments.length)} input, "
                         f"but the input is {(batch, length)}")
    if segments.device != device:
        raise ValueError(f"{op}: segments are on {segments.device} but the input is on {device}")
    return segments


def states_expected(segments: Segments | None, batch: int) -> tuple[str, int]:
    """The leading size of initial/final states: ("num_docs", n) with segments, else ("batch", batch)."""
    return ("num_docs", segments.num_docs) if segments is not None else ("batch", batch)


def shapes_equal(op: str, name: str, t: Any, want: Iterable[int], doc: str) -> None:
    """``t`` must be a tensor of shape ``want`` (``doc`` names the dimensions, e.g. "(batch=2, D=4, L=7)")."""
    if not isinstance(t, Tensor) or tuple(t.shape) != tuple(want):
        raise ValueError(f"{op}: {name} must be {doc}, got shape {shape(t)}")


# -- whole-model one-token steps (mamba_lm_step, mamba2_lm_step): a token per row and a state per block ---------
def lm_step_token_and_layers(op: str, token: Any, weights: Any) -> None:
    """``token`` a non-empty (batch,) integer tensor; ``weights`` one norm weight per layer."""
    if not isinstance(token, Tensor) or token.dim() != 1 or token.shape[0] == 0 or token.is_floating_point() \
            or token.is_complex() or token.dtype == torch.bool:
        raise ValueError(f"{op}: token must be a non-empty (batch,) integer tensor, got "
                         f"{getattr(token, 'dtype', type(token).__name__)} of shape {tuple(getattr(token, 'shape', ()))}")
    if len(weights.layers) != len(weights.norm_weights):
        raise ValueError(f"{op}: weights has {len(weights.layers)} layers but {len(weights.norm_weights)} "
                         "norm_weights")


def lm_step_state_count(op: str, state: Any, weights: Any) -> None:
    """``state`` a list or tuple of one (conv_state, ssm_state) per layer of ``weights``."""
    if not isinstance(state, (list, tuple)) or len(state) != len(weights.layers):
        got = f"{len(state)} entries" if isinstance(state, (list, tuple)) else type(state).__name__
        raise ValueError(f"{op}: state must hold one (conv_state, ssm_state) per layer "
                         f"({len(weights.layers)}), got {got}")


def fake_lm_step(token: Tensor, state: Any, like: Tensor, vocab: int) -> tuple[Tensor, list]:
    """Empty (logits (batch, vocab) like ``like``, the next state shaped as ``state``): the custom operators'
    fake implementation of a whole-model step."""
    return like.new_empty(token.shape[0], vocab), [(c.new_empty(c.shape), h.new_empty(h.shape)) for c, h in state]
