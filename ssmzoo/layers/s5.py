"""S5: Smith, Warrington, Linderman, "Simplified State Space Layers for Sequence Modeling" (ICLR 2023,
arXiv 2208.04933).

One MIMO SSM per layer (not one SISO SSM per channel as in S4): a state of P complex entries shared by all
d_model = H channels, kept diagonal by initialising A block-diagonally with J copies of HiPPO-N (the normal
part of HiPPO-LegS, S5 sec. 4.2 / app. B.1) and working in its eigenbasis V:

    Λ = eig(HiPPO-N) (J blocks),  B̃ = V⁻¹ B,  C̃ = C V;
    ZOH with a learned timescale per state (S5 eq. 6):  Λ̄ = exp(Λ Δ),  B̄ = Λ⁻¹ (Λ̄ − I) B̃;
    x_k = Λ̄ x_{k−1} + B̄ u_k,   y_k = 2 Re(C̃ x_k) + D u_k,

storing one of each conjugate pair (P/2 states, hence the 2 Re; S5's ``conj_sym``). The recurrence runs as a
parallel scan (ops/diagonal_recurrence). Bidirectional (S5's LRA setting): a second, anti-causal scan of the
same Λ̄, B̄ read out by its own C̃₂. Then GELU and S5's gated output (``activation``, modules/gated_output.py).
The initialisations follow the authors' code: B from a LeCun normal then V⁻¹ B; C from a LeCun or truncated
standard normal then C V ("lecun_normal", "trunc_standard_normal"), or a complex normal used as C̃
("complex_normal"); D ~ N(0, 1); log Δ uniform in [log dt_min, log dt_max].
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from ..modules.checks import check_bool, check_choice, check_float, check_int
from ..modules.gated_output import GatedOutput
from ..ops.hippo import legs
from .base import register, tag_param
from .diagonal_ssm import DiagonalSSMLayer, check_recurrence_backend


def hippo_n_eig(n: int) -> tuple[Tensor, Tensor]:
    """(Λ (n/2,), V (n, n/2)) complex128: half of the eigen-decomposition of HiPPO-N of size n (even), the
    eigenvalues with negative imaginary part first as S5's code keeps them (the other half are their conjugates).

    HiPPO-N = A_LegS + p pᵀ with p_k = sqrt(k + 1/2) is -1/2 I plus a skew-symmetric S; S = iV diag(μ) V*."""
    a, _ = legs(n)
    p = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)
    normal = a + p[:, None] * p[None, :]
    skew = normal + 0.5 * torch.eye(n, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small decomposition: LAPACK's threads only lose time on a busy machine
    try:
        mu, vecs = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # ascending
    finally:
        torch.set_num_threads(threads)
    half = n // 2
    lam = torch.complex(torch.diagonal(normal).mean().expand(half).clone(), mu[:half])
    return lam, vecs[:, :half]


def _lecun_normal(shape: tuple[int, ...], fan_in: int) -> Tensor:
    """Truncated normal (at 2 standard deviations) with variance 1 / fan_in, as JAX's ``lecun_normal``."""
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    t = torch.empty(shape, dtype=torch.float64)
    return nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


@register("s5")
class S5(DiagonalSSMLayer):
    """S5 layer. Input and output (batch, length, d_model).

    Args:
        d_model: channels H.
        d_state: the state size P (even): P/2 complex states are stored (conjugate symmetry).
        blocks: J, the number of HiPPO-N blocks of the initial A (must divide d_state, each block even).
        bidirectional: add the anti-causal scan (then the layer is not causal and cannot step).
        discretization: "zoh" (S5's) or "bilinear".
        dt_min, dt_max: range of the log-uniform init of the per-state timescales Δ.
        clip_eigs: keep Re Λ <= -1e-4 (S5's ``clip_eigs``, for unbounded lengths).
        C_init: "lecun_normal", "trunc_standard_normal" (sampled, then C V) or "complex_normal" (C̃ directly).
        activation: S5's output stage, "half_glu1", "half_glu2", "full_glu" or "gelu".
        dropout: dropout inside the output stage.
        lr: learning rate of Λ and Δ (and of B under ``opt_config`` "standard" or "BandCdecay"); None: the
            optimiser's. They never get weight decay (B does under "BandCdecay").
        opt_config: S5's optimiser split: "standard" (B with the SSM lr, no weight decay), "BfastandCdecay" (B
            with the global lr and weight decay), "BandCdecay" (B with the SSM lr and weight decay).
        dt_global: Δ with the global learning rate (S5's ``dt_global``) rather than ``lr``.
        diagonal_recurrence_backend: backend of the recurrence (None: $SSMZOO_BACKEND or "auto").
    """

    readout_scale = 2.0  # one of each conjugate pair is stored

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        blocks: int = 1,
        bidirectional: bool = False,
        discretization: Literal["zoh", "bilinear"] = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        clip_eigs: bool = False,
        C_init: Literal["lecun_normal", "trunc_standard_normal", "complex_normal"] = "lecun_normal",
        activation: Literal["half_glu1", "half_glu2", "full_glu", "gelu"] = "half_glu1",
        dropout: float = 0.0,
        lr: float | None = 1e-3,
        opt_config: Literal["standard", "BfastandCdecay", "BandCdecay"] = "standard",
        dt_global: bool = False,
        diagonal_recurrence_backend: str | None = None,
    ) -> None:
        super().__init__(d_model, causal=not bidirectional)
        owner = "S5"
        if not isinstance(d_state, int) or isinstance(d_state, bool) or d_state < 2 or d_state % 2:
            raise ValueError(f"{owner}: d_state must be an even int >= 2 (P/2 conjugate pairs), got {d_state!r}")
        check_int(owner, "blocks", blocks)
        if d_state % blocks or (d_state // blocks) % 2:
            raise ValueError(f"{owner}: blocks must divide d_state={d_state} into blocks of even size, got {blocks}")
        check_bool(owner, "bidirectional", bidirectional)
        check_choice(owner, "discretization", discretization, ("zoh", "bilinear"))
        check_float(owner, "dt_min", dt_min, above=0.0)
        check_float(owner, "dt_max", dt_max, above=0.0)
        if dt_min > dt_max:
            raise ValueError(f"{owner}: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        check_bool(owner, "clip_eigs", clip_eigs)
        check_choice(owner, "C_init", C_init, ("lecun_normal", "trunc_standard_normal", "complex_normal"))
        check_float(owner, "lr", lr, above=0.0, optional=True)
        check_choice(owner, "opt_config", opt_config, ("standard", "BfastandCdecay", "BandCdecay"))
        check_bool(owner, "dt_global", dt_global)
        check_recurrence_backend(owner, diagonal_recurrence_backend)
        self.d_state, self.blocks, self.bidirectional = d_state, blocks, bidirectional
        self.discretization, self.clip_eigs = discretization, clip_eigs
        self.recurrence_backend = diagonal_recurrence_backend
        h, p, block = d_model, d_state, d_state // blocks

        lam, v = hippo_n_eig(block)
        lam = lam.repeat(blocks)  # (P/2,)
        vinv = v.conj().T  # V is unitary: V⁻¹ = V*
        self.Lambda_re = tag_param(nn.Parameter(lam.real.float()), lr=lr)
        self.Lambda_im = tag_param(nn.Parameter(lam.imag.float()), lr=lr)
        # B̃ = V⁻¹ B block by block, B (P, H) ~ LeCun normal with fan-in P (JAX's default axes for (P, H))
        b = _lecun_normal((blocks, block, h), fan_in=p).to(torch.complex128)
        b_tilde = torch.einsum("nk,jkh->jnh", vinv, b).reshape(p // 2, h)
        b_param = nn.Parameter(torch.view_as_real(b_tilde).float().contiguous())
        if opt_config == "standard":
            tag_param(b_param, lr=lr)
        elif opt_config == "BandCdecay":
            tag_param(b_param, lr=lr, weight_decay=None)
        self.B = b_param
        directions = 2 if bidirectional else 1
        cs = [self._init_c(C_init, h, p, blocks, v) for _ in range(directions)]
        self.C = nn.Parameter(torch.stack(cs).float())  # (directions, H, P/2, 2)
        self.D = nn.Parameter(torch.randn(h))
        log_step = torch.rand(p // 2, dtype=torch.float64) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_step = nn.Parameter(log_step.float())
        if not dt_global:
            tag_param(self.log_step, lr=lr)
        self.out = GatedOutput(d_model, activation, dropout, owner=owner)

    @staticmethod
    def _init_c(kind: str, h: int, p: int, blocks: int, v: Tensor) -> Tensor:
        """C̃ (H, P/2, 2) as a real view."""
        if kind == "complex_normal":
            return torch.randn(h, p // 2, 2, dtype=torch.float64) * math.sqrt(0.5)
        # JAX's lecun_normal on (H, P, 2) has fan-in P·H; trunc_standard_normal samples each row (1, P, 2): fan-in P
        c = _lecun_normal((h, p, 2), fan_in=p * h if kind == "lecun_normal" else p)
        c = torch.view_as_complex(c.contiguous()).reshape(h, blocks, p // blocks)
        return torch.view_as_real(torch.einsum("hjk,kn->hjn", c, v).reshape(h, p // 2))

    def _discrete(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        re = self.Lambda_re.clamp(max=-1e-4) if self.clip_eigs else self.Lambda_re
        lam = torch.complex(re.to(real), self.Lambda_im.to(real))
        step = torch.exp(self.log_step.to(real))
        b = torch.view_as_complex(self.B.to(real))
        if self.discretization == "zoh":
            lam_bar = torch.exp(lam * step)
            return lam_bar, ((lam_bar - 1) / lam)[:, None] * b
        bl = 1 / (1 - step / 2 * lam)
        return bl * (1 + step / 2 * lam), (bl * step)[:, None] * b
