"""LRU: the Linear Recurrent Unit of Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu, De, "Resurrecting
Recurrent Neural Networks for Long Sequences" (ICML 2023, arXiv 2303.06349).

A diagonal complex linear recurrence, parameterised and initialised for stable long-range memory:

    λ_j = exp(−exp(ν_j) + i exp(θ_j))                 (the exponential parameterisation, sec. 3.3)
    x_k = λ ⊙ x_{k−1} + γ ⊙ (B u_k),   y_k = Re(C x_k) + D ⊙ u_k,   γ_j = exp(γ_log_j) (init √(1 − |λ_j|²))

with λ drawn uniformly on the ring r_min <= |λ| <= r_max, phase in [0, max_phase] (sec. 3.2), γ the
normalisation that keeps the state's scale independent of |λ| at init (sec. 3.4), B and C complex Glorot-style
normal (B ~ N(0, 1/(2H)), C ~ N(0, 1/N) per real and imaginary part), D ~ N(0, 1), as in the paper's appendix A.
The recurrence runs as a parallel scan (ops/diagonal_recurrence); then GELU and a GLU (``activation``), the
paper's block. Bidirectional: a second, anti-causal scan of the same λ and γ B read out by its own C.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from ..modules.checks import check_bool, check_float, check_int
from ..modules.gated_output import GatedOutput
from .base import register, tag_param
from .diagonal_ssm import DiagonalSSMLayer, check_recurrence_backend


@register("lru")
class LRU(DiagonalSSMLayer):
    """Linear Recurrent Unit layer. Input and output (batch, length, d_model).

    Args:
        d_model: channels H.
        d_state: N, the number of complex states.
        r_min, r_max: the ring of the initial |λ| (0 <= r_min < r_max <= 1).
        max_phase: the initial phases are uniform in [0, max_phase] (2π: the whole ring; π/10 for Path-X).
        bidirectional: add the anti-causal scan (then the layer is not causal and cannot step).
        activation: the output stage, "full_glu" (the paper's GLU), "half_glu1", "half_glu2" or "gelu".
        dropout: dropout inside the output stage.
        lr: learning rate of the recurrence's parameters ν, θ, γ and B (the paper scales the global one down
            for them); None: the optimiser's. They never get weight decay.
        diagonal_recurrence_backend: backend of the recurrence (None: $SSMZOO_BACKEND or "auto").
    """

    readout_scale = 1.0

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
        bidirectional: bool = False,
        activation: Literal["full_glu", "half_glu1", "half_glu2", "gelu"] = "full_glu",
        dropout: float = 0.0,
        lr: float | None = None,
        diagonal_recurrence_backend: str | None = None,
    ) -> None:
        super().__init__(d_model, causal=not bidirectional)
        owner = "LRU"
        check_int(owner, "d_state", d_state)
        check_float(owner, "r_min", r_min, at_least=0.0, below=1.0)
        check_float(owner, "r_max", r_max, above=0.0)
        if not r_min < r_max <= 1.0:
            raise ValueError(f"{owner}: need 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
        check_float(owner, "max_phase", max_phase, above=0.0)
        check_bool(owner, "bidirectional", bidirectional)
        check_float(owner, "lr", lr, above=0.0, optional=True)
        check_recurrence_backend(owner, diagonal_recurrence_backend)
        self.d_state, self.bidirectional = d_state, bidirectional
        self.r_min, self.r_max, self.max_phase = r_min, r_max, max_phase
        self.recurrence_backend = diagonal_recurrence_backend
        h, n = d_model, d_state

        # Ring init (sec. 3.2): |λ|² uniform in [r_min², r_max²], i.e. λ uniform in area on the ring.
        u1, u2 = torch.rand(n, dtype=torch.float64), torch.rand(n, dtype=torch.float64)
        # Keep u away from 0: log(0) would make ν or θ infinite (probability ~0, but not exactly 0).
        u1, u2 = u1.clamp(min=1e-12), u2.clamp(min=1e-12)
        nu_log = torch.log(-0.5 * torch.log(u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2))
        theta_log = torch.log(max_phase * u2)
        modulus = torch.exp(-torch.exp(nu_log))
        self.nu_log = tag_param(nn.Parameter(nu_log.float()), lr=lr)
        self.theta_log = tag_param(nn.Parameter(theta_log.float()), lr=lr)
        self.gamma_log = tag_param(nn.Parameter(torch.log(torch.sqrt(1 - modulus ** 2)).float()), lr=lr)
        self.B = tag_param(nn.Parameter(torch.randn(n, h, 2) / math.sqrt(2 * h)), lr=lr)
        directions = 2 if bidirectional else 1
        self.C = nn.Parameter(torch.randn(directions, h, n, 2) / math.sqrt(n))
        self.D = nn.Parameter(torch.randn(h))
        self.out = GatedOutput(d_model, activation, dropout, owner=owner)

    def _discrete(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        lam = torch.exp(torch.complex(-torch.exp(self.nu_log.to(real)), torch.exp(self.theta_log.to(real))))
        b = torch.view_as_complex(self.B.to(real)) * torch.exp(self.gamma_log.to(real))[:, None]
        return lam, b
