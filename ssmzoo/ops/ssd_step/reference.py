"""The reference of ``ssd_step``: ``ssmzoo.ops.ssd.update.ssd_update``, SSD's one-token recurrence written out
(Dao & Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space
Duality", arXiv 2405.21060, section 3's recurrent form): per head h,

    Δ = clamp(softplus?(dt + dt_bias), dt_limit),   S ← exp(Δ A_h) S + Δ x Bᵀ,   y = S C + D_h x,   y *= silu(z)
"""

from __future__ import annotations

from torch import Tensor

from ..ssd.update import ssd_update
from .inputs import SsdStepInputs


def ssd_step_reference(inputs: SsdStepInputs) -> tuple[Tensor, Tensor]:
    """(y (batch, heads, headdim) in x's dtype, next state in float32, float64 for float64 x)."""
    i = inputs
    return ssd_update(i.x, i.dt, i.A, i.B, i.C, i.state, D=i.D, z=i.z, dt_bias=i.dt_bias, dt_softplus=i.dt_softplus,
                      dt_limit=i.dt_limit)
