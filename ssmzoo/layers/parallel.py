"""Several sequence layers side by side on one input, their outputs summed:

    y = Σ_i out_i · layer_i(in_i · x)

Falcon-H1's hybrid block (Zuo et al. 2025, "Falcon-H1: A Family of Hybrid-Head Language Models Redefining
Efficiency and Performance", arXiv 2507.22448, section 2): a Mamba-2 layer and an attention layer read the same
normalised input and their outputs are added, with µP multipliers on each one's input and output. Any registered
causal layers compose this way; the state is the tuple of theirs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..modules.checks import check_float
from ..ops.segments import Segments
from .base import SequenceLayer, build, register

_KEYS = {"layer", "args", "in_multiplier", "out_multiplier"}


@register("parallel")
class Parallel(SequenceLayer):
    """Registered causal layers side by side. Input and output (batch, length, d_model).

    Args:
        d_model: model width.
        layers: one dict per layer: ``{"layer": name, "args": {...}, "in_multiplier": 1.0, "out_multiplier": 1.0}``
            (d_model is given to each; the multipliers scale its input and its output).

    Parameters: those of each layer, under ``layers.{i}``. State: a tuple of the layers' states, in order.
    ``supported_dtypes``, ``prefill_rows`` and ``segments_fast_path`` are what all the layers allow.
    """

    def __init__(self, d_model: int, layers: list[dict[str, Any]]) -> None:
        super().__init__(d_model, causal=True)
        if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(e, dict) for e in layers):
            raise ValueError(f"Parallel: layers must be a non-empty list of dicts {{'layer': name, 'args': {{...}}, "
                             f"'in_multiplier': m, 'out_multiplier': m}}, got {layers!r}")
        built, self.in_multipliers, self.out_multipliers = [], [], []
        for i, entry in enumerate(layers):
            where = f"Parallel: layers[{i}]"
            unknown = sorted(set(entry) - _KEYS)
            if unknown or not isinstance(entry.get("layer"), str):
                raise ValueError(f"{where} must name a registered layer ('layer': name) and take only {sorted(_KEYS)}, "
                                 f"got {entry!r}")
            args = entry.get("args") or {}
            if not isinstance(args, dict) or "d_model" in args:
                raise ValueError(f"{where}: args must be a dict of the layer's arguments without d_model, got {args!r}")
            try:
                layer = build(entry["layer"], d_model=d_model, **args)
            except (ValueError, TypeError) as e:
                raise ValueError(f"{where}: {e}") from e
            if not layer.causal:
                raise ValueError(f"{where}: {entry['layer']!r} with {args} is not causal")
            built.append(layer)
            self.in_multipliers.append(check_float(where, "in_multiplier", entry.get("in_multiplier", 1.0)))
            self.out_multipliers.append(check_float(where, "out_multiplier", entry.get("out_multiplier", 1.0)))
        self.layers = nn.ModuleList(built)
        self.supported_dtypes = tuple(d for d in built[0].supported_dtypes
                                      if all(d in layer.supported_dtypes for layer in built))
        rows = [layer.prefill_rows for layer in built]
        self.prefill_rows = None if None in rows else min(rows)
        self.segments_fast_path = all(layer.segments_fast_path for layer in built)

    def _inputs(self, x: Tensor) -> list[Tensor]:
        return [x if m == 1.0 else x * m for m in self.in_multipliers]

    def _sum(self, ys: list[Tensor]) -> Tensor:
        out = None
        for y, m in zip(ys, self.out_multipliers):
            y = y if m == 1.0 else y * m
            out = y if out is None else out + y
        return out

    def _forward(self, x: Tensor, state: tuple | None, lengths: Tensor | None,
                 return_state: bool) -> tuple[Tensor, tuple | None]:
        states = state if state is not None else (None,) * len(self.layers)
        outs = [layer._forward(u, s, lengths, return_state) for layer, u, s in zip(self.layers, self._inputs(x), states)]
        return self._sum([y for y, _ in outs]), (tuple(s for _, s in outs) if return_state else None)

    def _forward_segments(self, x: Tensor, state: tuple | None, segments: Segments,
                          return_state: bool) -> tuple[Tensor, tuple | None]:
        """Each layer on the packed documents its own way (in one pass, or each document alone)."""
        states = state if state is not None else (None,) * len(self.layers)
        outs = [layer._forward_segments(u, s, segments, return_state)
                for layer, u, s in zip(self.layers, self._inputs(x), states)]
        return self._sum([y for y, _ in outs]), (tuple(s for _, s in outs) if return_state else None)

    def _final_state(self, x: Tensor, state: tuple | None) -> tuple:
        states = state if state is not None else (None,) * len(self.layers)
        return tuple(layer._final_state(u, s) for layer, u, s in zip(self.layers, self._inputs(x), states))

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> tuple:
        return tuple(layer._init_state(batch_size, device, dtype) for layer in self.layers)

    def _expected_state(self, state: Any, batch: int, dtype: torch.dtype) -> Any:
        """Each layer's own form (a growing attention cache takes the given state's length)."""
        if isinstance(state, tuple) and not hasattr(state, "_fields") and len(state) == len(self.layers):
            return tuple(layer._expected_state(s, batch, dtype) for layer, s in zip(self.layers, state))
        return self._state_form(batch, dtype)

    def _step(self, x_t: Tensor, state: tuple) -> tuple[Tensor, tuple]:
        outs = [layer._step(u, s) for layer, u, s in zip(self.layers, self._inputs(x_t), state)]
        return self._sum([y for y, _ in outs]), tuple(s for _, s in outs)

    def extra_repr(self) -> str:
        return f"in_multipliers={self.in_multipliers}, out_multipliers={self.out_multipliers}"
