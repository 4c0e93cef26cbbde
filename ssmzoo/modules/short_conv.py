"""A stateful short causal convolution: depthwise, width W, optional bias and SiLU.

    y_t = act(bias + Σ_{k<W} weight[:, 0, k] x̃_{t+k}),   x̃ = [state, x]

so the last tap multiplies the current input x_t (the convention of nn.Conv1d with W − 1 zeros of left
padding, and of the causal-conv1d package). The state is the last W − 1 inputs, (batch, channels, W − 1),
zeros for a fresh stream: a stream continues exactly across calls and one token at a time. Used before
Mamba's scan (Gu & Dao 2023, Fig. 3), on Titans' q/k/v, and with fixed taps as SpaceTime's
preprocessing filters. Runs on :func:`ssmzoo.ops.causal_conv1d.causal_conv1d`, so its backends
(causal-conv1d on CUDA among them) are used.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from ..ops import causal_conv1d as conv_op
from ..ops.causal_conv1d import causal_conv1d, causal_conv1d_update
from ..ops.segments import Segments
from .checks import autocast_enabled, check_bool, check_choice, check_int


class ShortConvolution(nn.Module):
    """Depthwise causal convolution over x (batch, length, channels), channels last.

    Args:
        channels: D.
        width: W >= 1 taps.
        bias: learn a bias (D,).
        activation: None or "silu", applied after the bias.
        taps: fixed taps (D, W) in the convention above (taps[:, -1] multiplies x_t): the weight is then
            a buffer, not trained (SpaceTime's differencing and moving-average filters). None: learned,
            initialised as nn.Conv1d is.
        causal_conv1d_backend: backend of the op (None: $SSMZOO_BACKEND or "auto"; see
            ``ssmzoo.ops.causal_conv1d.dispatch``).

    ``weight`` (D, 1, W) and ``bias`` (D,) have nn.Conv1d's names and shapes, so checkpoints of modules
    that used a depthwise nn.Conv1d (Mamba's ``conv1d``) load unchanged.
    """

    def __init__(
        self,
        channels: int,
        width: int,
        bias: bool = False,
        activation: Literal["silu"] | None = None,
        taps: Tensor | None = None,
        causal_conv1d_backend: str | None = None,
    ) -> None:
        super().__init__()
        check_int("ShortConvolution", "channels", channels)
        check_int("ShortConvolution", "width", width)
        check_bool("ShortConvolution", "bias", bias)
        check_choice("ShortConvolution", "activation", activation, (None, "silu"))
        self.check_backend(causal_conv1d_backend, "ShortConvolution")
        self.channels, self.width, self.activation = channels, width, activation
        self.causal_conv1d_backend = causal_conv1d_backend
        if taps is None:
            self.weight = nn.Parameter(torch.empty(channels, 1, width))
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv1d's init: U(±1/sqrt(W))
        else:
            if not isinstance(taps, Tensor) or tuple(taps.shape) != (channels, width) or not taps.is_floating_point():
                got = f"{taps.dtype} {tuple(taps.shape)}" if isinstance(taps, Tensor) else type(taps).__name__
                raise ValueError(f"ShortConvolution: taps must be a float tensor (channels={channels}, "
                                 f"width={width}), got {got}")
            # Not persistent: fixed taps are a function of the owner's arguments, not learned state.
            self.register_buffer("weight", rearrange(taps.detach().clone(), "d w -> d 1 w"), persistent=False)
        if bias:
            self.bias = nn.Parameter(torch.empty(channels))
            bound = 1 / math.sqrt(width)
            nn.init.uniform_(self.bias, -bound, bound)
        else:
            self.register_parameter("bias", None)

    @staticmethod
    def check_backend(causal_conv1d_backend: str | None, owner: str) -> None:
        """Raise a ValueError naming ``owner`` unless the backend name is None, "auto" or the op's."""
        conv_op.dispatch.check_name(causal_conv1d_backend, owner, "causal_conv1d_backend")

    def forward(
        self, x: Tensor, state: Tensor | None = None, return_state: bool = False, segments: Segments | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x (batch, length, channels), state (batch, channels, W − 1) or None -> y (batch, length,
        channels), or (y, final state) with ``return_state``. ``segments``: packed documents, no tap reading
        across a document start; states are then one per document (num_docs, channels, W − 1)."""
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"ShortConvolution: x must be (batch, length, channels={self.channels}), got {got}")
        if x.dtype != self.weight.dtype and not autocast_enabled(x.device):
            raise ValueError(f"ShortConvolution: x has dtype {x.dtype} but the weight is {self.weight.dtype}; "
                             f"convert one to match")
        out = causal_conv1d(
            rearrange(x, "b l d -> b d l"), self._taps(), self.bias, self.activation, initial_state=state,
            output_final_state=return_state, segments=segments, backend=self.causal_conv1d_backend,
        )
        if return_state:
            y, state = out
            return rearrange(y, "b d l -> b l d"), state
        return rearrange(out, "b d l -> b l d")

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One token: x_t (batch, channels), state (batch, channels, W − 1) -> (y_t, next state)."""
        return causal_conv1d_update(x_t, state, self._taps(), self.bias, self.activation)

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> Tensor:
        """The fresh-stream state: zeros (batch, channels, W − 1)."""
        return torch.zeros(batch_size, self.channels, self.width - 1, device=device or self.weight.device,
                           dtype=dtype or self.weight.dtype)

    def _taps(self) -> Tensor:
        return rearrange(self.weight, "d 1 w -> d w")

    def extra_repr(self) -> str:
        fixed = ", fixed taps" if not isinstance(self.weight, nn.Parameter) else ""
        return f"{self.channels}, width={self.width}, bias={self.bias is not None}, activation={self.activation}{fixed}"
