"""One token of a whole Mamba language model (embedding, pre-norm residual Mamba blocks, final RMSNorm,
LM head), as the PyTorch formulas of ``LanguageModel.step``: the readable reference of the
``mamba_lm_step`` op."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..mamba_inner import State
from ..mamba_step import MambaStepInputs
from ..mamba_step.reference import mamba_step_reference
from .inputs import MambaLMStepInputs


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x / sqrt(mean(x²) + eps) · weight over the last dimension (half precision computed in float32)."""
    dtype = x.dtype
    x = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(x.dtype)
    return y.to(dtype)


def mamba_lm_step_reference(inputs: MambaLMStepInputs) -> tuple[Tensor, list[State]]:
    """token (batch,) -> next-token logits (batch, vocab) and the next per-layer states."""
    token, state, w = inputs
    h = F.embedding(token, w.embedding)  # the residual stream
    new_state = []
    for norm_weight, layer, s in zip(w.norm_weights, w.layers, state):
        y, s = mamba_step_reference(MambaStepInputs(rms_norm(h, norm_weight, w.eps), s, layer))
        h = h + y
        new_state.append(s)
    return F.linear(rms_norm(h, w.norm_f_weight, w.eps), w.lm_head_weight), new_state
