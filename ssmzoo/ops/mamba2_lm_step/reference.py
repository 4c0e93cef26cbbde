"""One token of a whole Mamba-2 language model (embedding, pre-norm residual Mamba-2 blocks, final RMSNorm, head),
as the PyTorch formulas of ``LanguageModel.step`` with ``ssmzoo.layers.Mamba2``'s step: the readable reference of
the ``mamba2_lm_step`` op (Dao & Gu 2024, arXiv 2405.21060, section 7.1 and the SSD recurrence of section 3):

    z, xBC, dt = in_proj(u);  x, B, C = SiLU(conv1d over the cached window of xBC)
    Δ = clamp(softplus(dt + dt_bias), dt_limit);  S ← exp(Δ A_h) S + Δ x Bᵀ;  y = S C + D x
    y = RMSNorm(y · SiLU(z)) (per group; or RMSNorm(y) · SiLU(z), or y · SiLU(z) without a norm);  out_proj(y)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..causal_conv1d import causal_conv1d_update
from ..mamba_lm_step.reference import rms_norm
from ..quantized import linear
from ..ssd.update import ssd_update
from .inputs import Mamba2BlockWeights, Mamba2LMStepInputs, State


def gated_rms_norm(y: Tensor, z: Tensor, weight: Tensor, group_size: int, eps: float, norm_before_gate: bool) -> Tensor:
    """RMSNorm over groups of ``group_size`` channels, gated by SiLU(z) before (default) or after the norm."""
    dtype = y.dtype  # half precision computed in float32, as the layer's RMSNorm
    y, z = y.to(torch.promote_types(dtype, torch.float32)), z.to(torch.promote_types(dtype, torch.float32))
    if not norm_before_gate:
        y = y * F.silu(z)
    groups = rearrange(y, "b (g s) -> b g s", s=group_size)
    groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + eps)
    y = rearrange(groups, "b g s -> b (g s)") * weight.to(y.dtype)
    return (y * F.silu(z) if norm_before_gate else y).to(dtype)


def mamba2_block_step(u: Tensor, state: State, w: Mamba2BlockWeights) -> tuple[Tensor, State]:
    """u (batch, d_model), the mixer's input -> (its output (batch, d_model), next state)."""
    conv_state, ssm_state = state
    heads, conv_dim = w.A_log.shape[0], w.conv_weight.shape[0]
    d_inner = w.out_proj_weight.shape[1]
    d_state = (conv_dim - d_inner) // (2 * w.ngroups)
    z, xBC, dt = torch.split(linear(u, w.in_proj_weight, w.in_proj_bias), [d_inner, conv_dim, heads], dim=-1)
    xBC, conv_state = causal_conv1d_update(xBC, conv_state, w.conv_weight, w.conv_bias, "silu")
    x, B, C = torch.split(xBC, [d_inner, w.ngroups * d_state, w.ngroups * d_state], dim=-1)
    D = w.D
    if D is not None and D.shape[0] == d_inner:
        D = rearrange(D, "(h p) -> h p", h=heads)
    gate_in_ssd = w.norm_weight is None
    y, ssm_state = ssd_update(
        rearrange(x, "b (h p) -> b h p", h=heads), dt, -torch.exp(w.A_log.to(torch.promote_types(w.A_log.dtype, torch.float32))),
        rearrange(B, "b (g n) -> b g n", g=w.ngroups), rearrange(C, "b (g n) -> b g n", g=w.ngroups), ssm_state,
        D=D, z=rearrange(z, "b (h p) -> b h p", h=heads) if gate_in_ssd else None, dt_bias=w.dt_bias,
        dt_softplus=True, dt_limit=w.dt_limit)
    y = rearrange(y, "b h p -> b (h p)")
    if not gate_in_ssd:
        y = gated_rms_norm(y, z, w.norm_weight, w.norm_group_size, w.norm_eps, w.norm_before_gate)
    return linear(y, w.out_proj_weight, w.out_proj_bias), (conv_state, ssm_state)


def mamba2_lm_step_reference(inputs: Mamba2LMStepInputs) -> tuple[Tensor, list[State]]:
    """token (batch,) -> next-token logits (batch, vocab) and the next per-layer states."""
    token, state, w = inputs
    h = F.embedding(token, w.embedding)  # the residual stream
    new_state = []
    for norm_weight, layer, s in zip(w.norm_weights, w.layers, state):
        y, s = mamba2_block_step(rms_norm(h, norm_weight, w.eps), s, layer)
        h = h + y
        new_state.append(s)
    return linear(rms_norm(h, w.norm_f_weight, w.eps), w.head_weight), new_state
