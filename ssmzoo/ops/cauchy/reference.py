"""The Cauchy kernel of S4, as written in the paper: the readable reference. Gu, Goel & Ré, "Efficiently Modeling
Long Sequences with Structured State Spaces" (arXiv:2111.00396), Lemma C.3.

out[..., l] = Σ_n v_n / (z_l - w_n) + conj(v_n) / (z_l - conj(w_n)), materialising (..., N, L).
"""

from __future__ import annotations

from torch import Tensor

from .inputs import CauchyInputs


def cauchy_reference(x: CauchyInputs) -> Tensor:
    """out (..., L) = Σ_n v_n / (z_l - w_n) + conj(v_n) / (z_l - conj(w_n)); materialises (..., N, L)."""
    v, w = x.v.unsqueeze(-1), x.w.unsqueeze(-1)
    return (v / (x.z - w) + v.conj() / (x.z - w.conj())).sum(-2)
