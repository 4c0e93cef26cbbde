"""SequenceModel: encoder -> residual blocks of any registered layer -> pooling -> decoder.

The backbone of the S4 papers' classification and regression experiments (LRA, sCIFAR): each block
is ``x + dropout(layer(norm(x)))`` (prenorm) or ``norm(x + dropout(layer(x)))`` (postnorm), with
an optional position-wise feed-forward sub-block after it.

Right-padded batches carry ``lengths``; the output for each sequence equals the output for that
sequence alone: padded positions are zeroed between blocks, layers receive ``lengths``, batch norm
pools statistics over real positions only, and pooling reads real positions only.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from .. import layers as layer_registry
from ..layers.base import check_finite, check_lengths, input_checks, input_checks_enabled
from ..modules.checks import autocast_enabled
from ..modules.mlp import MLP
from ..modules.padding import padding_mask
from .norm import apply_norm, build_norm


def _zero_padding(x: Tensor, mask: Tensor | None) -> Tensor:
    """Zero x (batch, length, d) where mask (batch, length) is False; where() so NaN cannot leak."""
    if mask is None:
        return x
    return torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))


class ResidualBlock(nn.Module):
    """One residual sub-block around a sequence layer or a feed-forward net."""

    def __init__(self, sublayer: nn.Module, d_model: int, norm: str, prenorm: bool, dropout: float) -> None:
        super().__init__()
        self.sublayer = sublayer
        self.norm = build_norm(norm, d_model)
        self.prenorm = prenorm
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None, lengths: Tensor | None) -> Tensor:
        z = _zero_padding(apply_norm(self.norm, x, mask), mask) if self.prenorm else x
        if isinstance(self.sublayer, MLP):  # position-wise: padding cannot reach the real tokens
            y = self.sublayer(z)
        else:
            y = self.sublayer(z, lengths=lengths)
        x = x + self.dropout(y)
        if not self.prenorm:
            x = apply_norm(self.norm, x, mask)
        return _zero_padding(x, mask)


def _layer_pattern(layer: Any, layer_args: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """``layer`` / ``layer_args`` as equal-length lists of names and argument dicts (checked)."""
    names = [layer] if isinstance(layer, str) else layer
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"SequenceModel: layer must be a layer name or a non-empty list of names, got {layer!r}")
    names = list(names)
    if layer_args is None or isinstance(layer_args, dict):
        args = [dict(layer_args or {}) for _ in names]
    elif isinstance(layer_args, (list, tuple)) and all(isinstance(a, dict) for a in layer_args):
        if len(layer_args) != len(names):
            raise ValueError(f"SequenceModel: layer_args must be one dict or one dict per layer in {names}, "
                             f"got {len(layer_args)} dicts")
        args = [dict(a) for a in layer_args]
    else:
        raise ValueError(f"SequenceModel: layer_args must be a dict or a list of dicts, got {layer_args!r}")
    if any("d_model" in a for a in args):
        raise ValueError("SequenceModel: layer_args must not contain d_model; it is set from d_model")
    return names, args


class SequenceModel(nn.Module):
    """Sequence classifier/regressor built from a registered sequence layer.

    Args:
        d_output: size of the output (classes for classification).
        vocab_size: token vocabulary (inputs are LongTensor (batch, length)); give this or ``d_input``.
        d_input: channels of real-valued inputs (batch, length, d_input); give this or ``vocab_size``.
        d_model: width of the residual stream.
        n_layers: number of residual blocks.
        layer: registered layer name (``ssmzoo.layers.available()``), or a list of names: a repeating pattern,
            block i using ``layer[i % len(layer)]`` (e.g. ``["swa", "hsa"]``: a local mixer under each HSA layer).
        layer_args: extra constructor arguments of that layer (``d_model`` is set here); with a list of layers,
            one dict per entry of the list (or one dict that every layer takes).
        norm: "layer", "batch" (statistics over real positions only) or "rms".
        prenorm: normalise before each sub-block (True) or after the residual sum (False).
        dropout: dropout on each sub-block's output before the residual sum.
        ffn: "none", or a position-wise sub-block after each layer: "mlp" (Linear, GELU, Linear) or "glu"
            (Linear to 2 · hidden, GLU, Linear); see ``ssmzoo.modules.MLP``.
        ffn_expand: hidden width of the feed-forward sub-block, in multiples of d_model.
        pooling: "mean" over real positions, "last" real token, or "none" (per-position outputs).
        paired: two sequences per sample (LRA Retrieval): x is (batch, 2, length[, d_input]) with
            lengths (batch, 2); both are encoded by the same blocks and pooled to h1, h2, and the
            decoder reads [h1, h2, h1·h2, h1 − h2].

    ``forward(x, lengths=None)`` returns (batch, d_output), or (batch, length, d_output) with
    pooling "none".
    """

    def __init__(
        self,
        d_output: int,
        vocab_size: int | None = None,
        d_input: int | None = None,
        d_model: int = 128,
        n_layers: int = 4,
        layer: str | list[str] = "s4d",
        layer_args: dict[str, Any] | list[dict[str, Any]] | None = None,
        norm: Literal["layer", "batch", "rms"] = "layer",
        prenorm: bool = True,
        dropout: float = 0.0,
        ffn: Literal["none", "mlp", "glu"] = "none",
        ffn_expand: int = 2,
        pooling: Literal["mean", "last", "none"] = "mean",
        paired: bool = False,
    ) -> None:
        super().__init__()
        if (vocab_size is None) == (d_input is None):
            raise ValueError(
                "SequenceModel: give exactly one of vocab_size (token inputs) or d_input (real-valued inputs), "
                f"got vocab_size={vocab_size!r}, d_input={d_input!r}"
            )
        for name, value in [
            ("d_output", d_output),
            ("d_model", d_model),
            ("ffn_expand", ffn_expand),
            ("vocab_size", vocab_size),
            ("d_input", d_input),
        ]:
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"SequenceModel: {name} must be a positive int, got {value!r}")
        if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 0:
            raise ValueError(f"SequenceModel: n_layers must be a non-negative int, got {n_layers!r}")
        if norm not in ("layer", "batch", "rms"):
            raise ValueError(f"SequenceModel: norm must be 'layer', 'batch' or 'rms', got {norm!r}")
        if ffn not in ("none", "mlp", "glu"):
            raise ValueError(f"SequenceModel: ffn must be 'none', 'mlp' or 'glu', got {ffn!r}")
        if pooling not in ("mean", "last", "none"):
            raise ValueError(f"SequenceModel: pooling must be 'mean', 'last' or 'none', got {pooling!r}")
        if paired and pooling == "none":
            raise ValueError("SequenceModel: paired=True needs a pooled representation; pooling must be 'mean' or 'last'")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SequenceModel: dropout must lie in [0, 1), got {dropout!r}")
        pattern, pattern_args = _layer_pattern(layer, layer_args)

        self.vocab_size, self.d_input, self.d_output = vocab_size, d_input, d_output
        self.d_model, self.pooling, self.prenorm, self.paired = d_model, pooling, prenorm, paired
        self.encoder: nn.Module = (
            nn.Embedding(vocab_size, d_model) if vocab_size is not None else nn.Linear(d_input, d_model)  # type: ignore[arg-type]
        )
        blocks: list[nn.Module] = []
        for i in range(n_layers):
            j = i % len(pattern)
            mixer = layer_registry.build(pattern[j], d_model=d_model, **pattern_args[j])
            blocks.append(ResidualBlock(mixer, d_model, norm, prenorm, dropout))
            if ffn != "none":
                feed_forward = MLP(d_model, ffn_expand * d_model, activation="sigmoid" if ffn == "glu" else "gelu",
                                   gated=ffn == "glu", dropout=dropout)
                blocks.append(ResidualBlock(feed_forward, d_model, norm, prenorm, dropout))
        self.blocks = nn.ModuleList(blocks)
        # With prenorm the residual stream is never normalised inside the blocks; normalise it once at the end.
        self.final_norm = build_norm(norm, d_model) if prenorm else None
        self.decoder = nn.Linear(4 * d_model if paired else d_model, d_output)

    def _check_inputs(self, x: Tensor, lengths: Tensor | None) -> Tensor | None:
        if not isinstance(x, Tensor):
            raise ValueError(f"SequenceModel: x must be a torch.Tensor, got {type(x).__name__}")
        if self.vocab_size is not None:
            if x.dim() != 2 or x.is_floating_point() or x.is_complex():
                raise ValueError(
                    "SequenceModel: with vocab_size set, x must be integer token ids of shape (batch, length), "
                    f"got {x.dtype} of shape {tuple(x.shape)}"
                )
        elif x.dim() != 3 or x.shape[-1] != self.d_input or not x.is_floating_point():
            raise ValueError(
                f"SequenceModel: with d_input set, x must be a float tensor (batch, length, d_input={self.d_input}), "
                f"got {x.dtype} of shape {tuple(x.shape)}"
            )
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"SequenceModel: x must have batch and length >= 1, got shape {tuple(x.shape)}")
        weight = self.encoder.weight
        if x.device != weight.device:
            raise ValueError(f"SequenceModel: x is on {x.device} but the model is on {weight.device}")
        if self.d_input is not None and x.dtype != weight.dtype and not autocast_enabled(x.device):
            raise ValueError(f"SequenceModel: x has dtype {x.dtype} but the model's parameters are {weight.dtype}; "
                             f"convert one to match (model.to({x.dtype}) or x.to({weight.dtype}))")
        if lengths is None:
            return None
        return check_lengths(lengths, x, "SequenceModel")

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x: tokens (batch, length) or features (batch, length, d_input); lengths (batch,) or None.
        With ``paired``, one more axis of size 2 after batch on both."""
        if not self.paired:
            return self.decoder(self.features(x, lengths))
        if not isinstance(x, Tensor) or x.dim() < 3 or x.shape[1] != 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"SequenceModel: with paired=True, x must be (batch, 2, length[, d_input]), got {shape}")
        if lengths is not None and (not isinstance(lengths, Tensor) or tuple(lengths.shape) != tuple(x.shape[:2])):
            raise ValueError(f"SequenceModel: with paired=True, lengths must have shape (batch, 2) = {tuple(x.shape[:2])}")
        h = self.features(x.flatten(0, 1), None if lengths is None else lengths.flatten())
        h1, h2 = h.unflatten(0, (-1, 2)).unbind(1)
        return self.decoder(torch.cat([h1, h2, h1 * h2, h1 - h2], dim=-1))

    def features(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The pooled representation (batch, d_model), or (batch, length, d_model) with pooling "none".

        The input's values (token range, NaN/inf in real positions) are checked here once, under the
        rule of ``ssmzoo.layers.base`` (CPU by default), and the layers run with their own value checks off."""
        lengths = self._check_inputs(x, lengths)
        mask = padding_mask(lengths, x.shape[1]) if lengths is not None else None
        if mask is not None:  # whatever sits in the padding (a token id, NaN), it must not matter
            fill = torch.zeros((), dtype=x.dtype, device=x.device)
            x = torch.where(mask if x.dim() == 2 else mask[..., None], x, fill)
        if self.vocab_size is not None:
            if input_checks_enabled(x.device) and (bool((x < 0).any()) or bool((x >= self.vocab_size).any())):
                raise ValueError(
                    f"SequenceModel: token ids must lie in [0, vocab_size={self.vocab_size}), "
                    f"got min {int(x.min())}, max {int(x.max())}"
                )
        else:
            check_finite(x, "SequenceModel", "x (at real positions)")
        with input_checks(False):
            h = _zero_padding(self.encoder(x), mask)
            for block in self.blocks:
                h = block(h, mask, lengths)
        if self.final_norm is not None:
            h = _zero_padding(apply_norm(self.final_norm, h, mask), mask)
        if self.pooling == "mean":
            if lengths is None:
                h = h.mean(1)
            else:
                h = h.sum(1) / lengths[:, None].to(h.dtype)  # padded positions are zero
        elif self.pooling == "last":
            if lengths is None:
                h = h[:, -1]
            else:
                h = h[torch.arange(h.shape[0], device=h.device), lengths - 1]
        return h
