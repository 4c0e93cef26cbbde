"""S4D: the diagonal state space layer (Gu, Gupta, Goel, Ré; NeurIPS 2022).

Per channel h, a diagonal complex SSM with N/2 stored conjugate pairs:
    x_t = Ā x_{t-1} + B̄ u_t,   y_t = 2 Re(C x_t) + D u_t
with ZOH (Ā = exp(ΔA), B̄ = (exp(ΔA) - 1)/A · B) or bilinear discretisation. The whole
sequence is one causal convolution with K_l = 2 Re Σ_n C_n B̄_n Ā_n^l (a Vandermonde product),
computed by FFT; ``step`` runs the recurrence.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from ..modules.checks import check_bool, check_choice, check_float, check_int
from ..modules.fft_conv import ssm_convolution
from ..modules.output_projection import OutputProjection
from ..ops import vandermonde as vandermonde_op
from ..ops.hippo import diagonal_init
from ..ops.vandermonde import vandermonde, vandermonde_transpose
from .base import SequenceLayer, register, tag_param


def check_ssm_args(owner: str, d_state: int, channels: int, bidirectional: bool, dt_min: float, dt_max: float,
                   lr: float | None) -> None:
    """The arguments S4 and S4D share."""
    if not isinstance(d_state, int) or isinstance(d_state, bool) or d_state < 2 or d_state % 2:
        raise ValueError(f"{owner}: d_state must be an even int >= 2 (N/2 conjugate pairs), got {d_state!r}")
    check_int(owner, "channels", channels)
    check_bool(owner, "bidirectional", bidirectional)
    check_float(owner, "dt_min", dt_min, above=0.0)
    check_float(owner, "dt_max", dt_max, above=0.0)
    if dt_min > dt_max:
        raise ValueError(f"{owner}: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    check_float(owner, "lr", lr, above=0.0, optional=True)


@register("s4d")
class S4D(SequenceLayer):
    """Diagonal SSM layer. Input and output (batch, length, d_model).

    Args:
        d_model: channels H.
        d_state: state size N (even; N/2 conjugate pairs are stored).
        channels: independent SSM kernels per input channel; outputs are mixed back to d_model.
        bidirectional: add an anti-causal kernel (then the layer is not causal and cannot step).
        init: diagonal init of A: "legs", "inv", "lin" or "real".
        discretization: "zoh" or "bilinear".
        dt_min, dt_max: range of the log-uniform init of Δ = exp(log_dt).
        lr: learning rate for A, B and log_dt (None: the optimiser's); they never get weight decay.
        activation, output, dropout: what follows the SSM (see OutputProjection).
        vandermonde_backend: backend of the Vandermonde kernel (None: $SSMZOO_BACKEND or "auto";
            "blocks", "reference", "chunked"; see ``ssmzoo.ops.vandermonde.dispatch``).
    """

    supported_dtypes = (torch.float32, torch.float64)

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        channels: int = 1,
        bidirectional: bool = False,
        init: Literal["legs", "inv", "lin", "real"] = "legs",
        discretization: Literal["zoh", "bilinear"] = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        lr: float | None = 1e-3,
        activation: Literal["gelu", "silu", "relu", "tanh", "identity"] = "gelu",
        output: Literal["glu", "linear", "none"] = "glu",
        dropout: float = 0.0,
        vandermonde_backend: str | None = None,
    ) -> None:
        super().__init__(d_model, causal=not bidirectional)
        check_ssm_args("S4D", d_state, channels, bidirectional, dt_min, dt_max, lr)
        check_choice("S4D", "init", init, ("legs", "inv", "lin", "real"))
        check_choice("S4D", "discretization", discretization, ("zoh", "bilinear"))
        vandermonde_op.dispatch.check_name(vandermonde_backend, "S4D", "vandermonde_backend")
        self.d_state, self.channels, self.bidirectional = d_state, channels, bidirectional
        self.discretization, self.vandermonde_backend = discretization, vandermonde_backend
        h, half = d_model, d_state // 2
        kernels = channels * (2 if bidirectional else 1)

        lam = diagonal_init(init, d_state).to(torch.complex64).repeat(h, 1)  # (H, N/2)
        log_dt = torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = tag_param(nn.Parameter(log_dt), lr=lr)
        # Re(A) = -exp(log_A_real) < 0 keeps every mode stable whatever the optimiser does.
        self.log_A_real = tag_param(nn.Parameter(torch.log(-lam.real)), lr=lr)
        self.A_imag = tag_param(nn.Parameter(lam.imag.clone()), lr=lr)
        self.B = tag_param(nn.Parameter(torch.view_as_real(torch.ones(h, half, dtype=torch.cfloat))), lr=lr)
        # C ~ N(0, 1/2) per real/imag part, i.e. unit complex variance, as in S4D.
        self.C = nn.Parameter(torch.randn(kernels, h, half, 2) * math.sqrt(0.5))
        self.D = nn.Parameter(torch.randn(channels, h))
        self.out = OutputProjection(channels * h, d_model, activation, output, dropout, owner="S4D")

    # -- discretisation ---------------------------------------------------------------------
    def _discrete(self) -> tuple[Tensor, Tensor]:
        """(log Ā, B̄) each (H, N/2) complex."""
        dt = torch.exp(self.log_dt)[:, None]
        a = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        b = torch.view_as_complex(self.B)
        if self.discretization == "zoh":
            dta = dt * a
            return dta, (torch.exp(dta) - 1) / a * b
        denom = 1 - dt * a / 2
        return torch.log((1 + dt * a / 2) / denom), dt * b / denom

    def kernel(self, length: int) -> Tensor:
        """The convolution kernels K (kernels, H, L): forward ones first, then backward ones."""
        log_a, b = self._discrete()
        c = torch.view_as_complex(self.C)
        return vandermonde(c * b, log_a, length, backend=self.vandermonde_backend)

    # -- contract -----------------------------------------------------------------------------
    def _forward(
        self, x: Tensor, state: Tensor | None, lengths: Tensor | None, return_state: bool
    ) -> tuple[Tensor, Tensor | None]:
        u = rearrange(x, "b l h -> b h l")
        length = u.shape[-1]
        y = ssm_convolution(x, self.kernel(length), self.channels, lengths)  # (B, C, H, L)
        y = y + self.D[None, :, :, None] * u[:, None]

        new_state = None
        if self.causal and (state is not None or return_state):
            log_a, b = self._discrete()
            c = torch.view_as_complex(self.C)
            if state is not None:
                # The carried-in state s adds 2 Re Σ_n C_n Ā_n^(t+1) s_n at step t.
                y = y + vandermonde(c[None] * (torch.exp(log_a) * state)[:, None], log_a, length,
                                    backend=self.vandermonde_backend)
            if return_state:
                new_state = b * vandermonde_transpose(u, log_a, backend=self.vandermonde_backend)
            if return_state and state is not None:
                new_state = new_state + torch.exp(log_a * length) * state
        # contiguous before the activation: on the transposed view its backward ran ~6x slower, and the output
        # projection's matmul copies it anyway
        y = rearrange(y, "b c h l -> b l (c h)").contiguous()
        return self.out(y.to(x.dtype)), new_state

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The state: (batch, H, N/2) complex, one entry per stored conjugate pair."""
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        return torch.zeros(batch_size, self.d_model, self.d_state // 2, dtype=cdtype, device=device)

    def _step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        log_a, b = self._discrete()
        c = torch.view_as_complex(self.C)
        state = torch.exp(log_a) * state + b * x_t[..., None]
        y = 2 * torch.einsum("chn,bhn->bch", c, state).real + self.D * x_t[:, None]
        return self.out(rearrange(y, "b c h -> b (c h)").to(x_t.dtype)), state
