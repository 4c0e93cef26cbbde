"""One token of a whole Mamba language model (embedding, pre-norm residual Mamba blocks, final RMSNorm,
LM head), as the PyTorch formulas of ``LanguageModel.step``: the readable reference of the
``mamba_lm_step`` op."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..mamba_inner import State
from ..mamba_step.reference import MambaStepWeights, mamba_step_reference


class MambaLMStepWeights(NamedTuple):
    """The model's parameters: ``layers[i]`` is block i's mixer, ``norm_weights[i]`` its RMSNorm; ``eps``
    the RMSNorms' epsilon."""

    embedding: Tensor                      # (vocab, d_model)
    norm_weights: tuple[Tensor, ...]       # (d_model,) per block
    layers: tuple[MambaStepWeights, ...]
    norm_f_weight: Tensor                  # (d_model,)
    lm_head_weight: Tensor                 # (vocab, d_model)
    eps: float
    # The C++ backend's copies of the matrices packed for its decode matmuls (``pack_weights``: per layer
    # in_proj, x_proj, dt_proj, out_proj, then the head), or None (it multiplies with ATen). A snapshot:
    # pack again after changing the weights. The reference ignores it.
    packed: tuple[Tensor, ...] | None = None


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x / sqrt(mean(x²) + eps) · weight over the last dimension (half precision computed in float32)."""
    dtype = x.dtype
    x = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(x.dtype)
    return y.to(dtype)


def mamba_lm_step_reference(token: Tensor, state: list[State], w: MambaLMStepWeights) -> tuple[Tensor, list[State]]:
    """token (batch,) -> next-token logits (batch, vocab) and the next per-layer states."""
    x = F.embedding(token, w.embedding)
    new_state = []
    for norm_weight, layer, s in zip(w.norm_weights, w.layers, state):
        y, s = mamba_step_reference(rms_norm(x, norm_weight, w.eps), s, layer)
        x = x + y
        new_state.append(s)
    return F.linear(rms_norm(x, w.norm_f_weight, w.eps), w.lm_head_weight), new_state
