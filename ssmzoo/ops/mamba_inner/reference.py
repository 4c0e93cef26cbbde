"""Mamba's inner block between in_proj and out_proj (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces", arXiv:2312.00752, Figure 3), as the readable composition of the ``causal_conv1d``
and ``selective_scan`` references:

    x, z = xz.chunk(2, -1);  u = SiLU(causal depthwise conv(x))
    δ, B, C = split(x_proj(u));  Δ = softplus(dt_proj(δ) + b_Δ)   (the scan applies bias and softplus)
    y = selective_scan(u, Δ, A, B, C, D) · SiLU(z)

With packed documents (``segments``) both ops run every document alone.
"""

from __future__ import annotations

from torch import Tensor

from .inputs import MambaInnerInputs, State
from .unfused import compose


def mamba_inner_reference(x: MambaInnerInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, State]:
    """The readable form: the conv and scan references composed."""
    return compose(x, output_final_state, "reference", "reference")
