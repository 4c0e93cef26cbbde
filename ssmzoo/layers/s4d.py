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

from ..ops.hippo import diagonal_init
from ..ops import vandermonde as vandermonde_op
from ..ops.vandermonde import vandermonde, vandermonde_transpose
from .base import SequenceLayer, register, reverse_padded, tag_param


def ssm_convolution(x: Tensor, k: Tensor, channels: int, lengths: Tensor | None) -> Tensor:
    """The convolution part of an SSM layer: x (B, L, H), kernels k (kernels, H, L) -> (B, C, H, L).

    With ``2 * channels`` kernels the second half runs anti-causally, on each sequence reversed within
    its own length, so padding never reaches the real tokens."""
    u = rearrange(x, "b l h -> b h l")
    y = fft_conv(u[:, None], k[:channels].to(u.dtype))
    if k.shape[0] > channels:
        u_rev = rearrange(reverse_padded(x, lengths), "b l h -> b h l")
        y_rev = fft_conv(u_rev[:, None], k[channels:].to(u.dtype))
        y = y + rearrange(reverse_padded(rearrange(y_rev, "b c h l -> b l c h"), lengths), "b l c h -> b c h l")
    return y


def fft_conv(u: Tensor, k: Tensor) -> Tensor:
    """Causal convolution y_t = Σ_{s<=t} k_s u_{t-s} along the last dim, by FFT of size 2L.

    u (..., L); k broadcastable to u (..., L)."""
    length = u.shape[-1]
    n = 2 * length
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y[..., :length]


class OutputProjection(nn.Module):
    """Activation, dropout, then a position-wise linear or GLU back to d_model (shared by SSM layers)."""

    def __init__(
        self,
        d_in: int,
        d_model: int,
        activation: Literal["gelu", "silu", "relu", "tanh", "identity"],
        output: Literal["glu", "linear", "none"],
        dropout: float,
    ) -> None:
        super().__init__()
        acts = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh, "identity": nn.Identity}
        if activation not in acts:
            raise ValueError(f"activation must be one of {', '.join(acts)}, got {activation!r}")
        if output not in ("glu", "linear", "none"):
            raise ValueError(f"output must be 'glu', 'linear' or 'none', got {output!r}")
        if output == "none" and d_in != d_model:
            raise ValueError(f"output='none' needs channels=1 (got {d_in // d_model} channels)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.activation = acts[activation]()
        self.dropout = nn.Dropout(dropout)
        if output == "glu":
            self.proj: nn.Module = nn.Sequential(nn.Linear(d_in, 2 * d_model), nn.GLU(dim=-1))
        elif output == "linear":
            self.proj = nn.Linear(d_in, d_model)
        else:
            self.proj = nn.Identity()

    def forward(self, y: Tensor) -> Tensor:
        return self.proj(self.dropout(self.activation(y)))


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
            "reference", "chunked"; see ``ssmzoo.ops.vandermonde.dispatch``).
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
        vandermonde_op.dispatch.check_name(vandermonde_backend, "S4D", "vandermonde_backend")
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"S4D: channels must be a positive int, got {channels!r}")
        if discretization not in ("zoh", "bilinear"):
            raise ValueError(f"S4D: discretization must be 'zoh' or 'bilinear', got {discretization!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"S4D: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
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
        self.out = OutputProjection(channels * h, d_model, activation, output, dropout)

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
        y = rearrange(y, "b c h l -> b l (c h)")
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
