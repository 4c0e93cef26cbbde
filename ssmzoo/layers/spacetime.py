"""SpaceTime's layers (Zhang et al., ICLR 2023, "Effectively Modeling Time Series with Simple Discrete State Spaces", arXiv 2303.09489): companion and shift SSMs, the
closed-loop companion SSM used for forecasting, and the fixed preprocessing layers.

Every channel h runs x_t = A x_{t−1} + b u_t, y_t = cᵀ x_t + D u_t with A = S + a e_dᵀ (companion)
or A = S (shift), so the layer is the causal convolution with k_l = cᵀAˡb computed by
:func:`ssmzoo.ops.companion.companion_kernel` (FFT / Sherman–Morrison by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..modules.checks import autocast_enabled, check_float, check_int, check_int_list
from ..modules.fft_conv import fft_conv
from ..modules.output_projection import OutputProjection
from ..modules.short_conv import ShortConvolution
from ..ops import companion as companion_op
from ..ops.companion import companion_final_state, companion_kernel, companion_matrix, krylov
from .base import SequenceLayer, register, tag_param


def capped_a(a: Tensor, max_a_norm: float | None) -> Tensor:
    """The normalisation of a: rescale so that ||a||_1 <= max_a_norm.

    SpaceTime divides a by its norm; with ||a||_1 < 1 every root of λ^d − Σ a_i λ^i lies strictly
    inside the unit disk (|Σ a_i λ^i| <= ||a||_1 |λ|^{d−1} < |λ|^d for |λ| >= 1), so kernels decay
    and the Sherman–Morrison denominator 1 − z e_dᵀ(I − zS)⁻¹a never vanishes on |z| = 1."""
    if max_a_norm is None:
        return a
    norm = a.abs().sum(-1, keepdim=True)
    return a * (max_a_norm / norm.clamp(min=max_a_norm))


def _apply_A(a: Tensor, x: Tensor) -> Tensor:
    """A x = S x + a x_{d−1} in O(d) (x (..., d))."""
    return F.pad(x[..., :-1], (1, 0)) + a * x[..., -1:]


def _causal_conv_tail(u: Tensor, k: Tensor, n: int) -> Tensor:
    """The last n outputs of the causal convolution y_t = Σ_{s<=t} k_{t−s} u_s: u (..., H, L), k (H, L) ->
    (..., H, n), as one product with the n x L Toeplitz rows of k (n <= L)."""
    length = u.shape[-1]
    lags = torch.arange(length - n, length, device=u.device)[:, None] - torch.arange(length, device=u.device)
    rows = k[:, lags.clamp(min=0)] * (lags >= 0).to(k.dtype)  # (H, n, L)
    return torch.einsum("...hs,hns->...hn", u, rows)


def _last_unit(d: int, like: Tensor) -> Tensor:
    e = torch.zeros(d, dtype=like.dtype, device=like.device)
    e[-1] = 1
    return e


class _CompanionConvolution(SequenceLayer):
    """Shared body of CompanionSSM and ShiftSSM (see their docstrings for the arguments)."""

    supported_dtypes = (torch.float32, torch.float64)

    def __init__(
        self,
        d_model: int,
        d_state: int,
        heads: int,
        kernel_repeat: int,
        learn_a: bool,
        max_a_norm: float | None,
        lr: float | None,
        activation: Literal["gelu", "silu", "relu", "tanh", "identity"],
        output: Literal["glu", "linear", "none"],
        dropout: float,
        companion_backend: str | None,
    ) -> None:
        super().__init__(d_model, causal=True)
        name = type(self).__name__
        for arg, v in (("d_state", d_state), ("heads", heads), ("kernel_repeat", kernel_repeat)):
            check_int(name, arg, v)
        if d_model % kernel_repeat:
            raise ValueError(f"{name}: kernel_repeat={kernel_repeat} must divide d_model={d_model}")
        check_float(name, "max_a_norm", max_a_norm, above=0.0, below=1.0, optional=True)
        check_float(name, "lr", lr, above=0.0, optional=True)
        companion_op.dispatch.check_name(companion_backend, name, "companion_backend")
        self.d_state, self.heads, self.kernel_repeat = d_state, heads, kernel_repeat
        self.max_a_norm, self.companion_backend = max_a_norm, companion_backend
        kernels = d_model // kernel_repeat  # distinct SSMs per head; each serves kernel_repeat channels
        shape = (heads, kernels, d_state)
        if learn_a:
            self.a = tag_param(nn.Parameter(torch.randn(shape) / d_state), lr=lr)
        else:
            self.register_buffer("a", torch.zeros(shape))
        self.b = tag_param(nn.Parameter(torch.randn(shape) / math.sqrt(d_state)), lr=lr)
        self.c = nn.Parameter(torch.randn(shape) / math.sqrt(d_state))
        self.D = nn.Parameter(torch.randn(heads, d_model))
        self.out = OutputProjection(heads * d_model, d_model, activation, output, dropout, owner=name)

    def ssm(self) -> tuple[Tensor, Tensor, Tensor]:
        """(a, b, c) each (heads, d_model, d_state): a normalised, kernels repeated over channels."""
        a = capped_a(self.a, self.max_a_norm) if isinstance(self.a, nn.Parameter) else self.a
        rep = lambda t: t.repeat_interleave(self.kernel_repeat, dim=1)
        return rep(a), rep(self.b), rep(self.c)

    def kernel(self, length: int) -> Tensor:
        """k (heads, d_model, length), k_l = cᵀAˡb."""
        a = capped_a(self.a, self.max_a_norm) if isinstance(self.a, nn.Parameter) else self.a
        k = companion_kernel(a, self.b, self.c, length, backend=self.companion_backend)
        return k.repeat_interleave(self.kernel_repeat, dim=1)

    # -- contract ------------------------------------------------------------------------------
    def _forward(
        self, x: Tensor, state: Tensor | None, lengths: Tensor | None, return_state: bool
    ) -> tuple[Tensor, Tensor | None]:
        u = rearrange(x, "b l h -> b h l")
        length = u.shape[-1]
        a, b, c = self.ssm()
        y = fft_conv(u[:, None], self.kernel(length)) + self.D[None, :, :, None] * u[:, None]  # (B, heads, H, L)
        if state is not None:
            # the carried-in state x_{−1} adds cᵀ A^{t+1} x_{−1} at step t: a kernel with b = A x_{−1}
            y = y + companion_kernel(a, _apply_A(a, state), c, length, backend=self.companion_backend)
        new_state = None
        if return_state:  # one more convolution, only when the caller wants the state
            e = _last_unit(self.d_state, a)
            w = fft_conv(u[:, None], companion_kernel(a, b, e, length, backend=self.companion_backend))
            if state is not None:
                w = w + companion_kernel(a, _apply_A(a, state), e, length, backend=self.companion_backend)
            new_state = companion_final_state(a, b, u[:, None], w, state)
        y = rearrange(y, "b c h l -> b l (c h)").contiguous()  # see S4D: the activation's backward on the view is slow
        return self.out(y.to(x.dtype)), new_state

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The state: (batch, heads, d_model, d_state)."""
        return torch.zeros(batch_size, self.heads, self.d_model, self.d_state, device=device, dtype=dtype)

    def _step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        a, b, c = self.ssm()
        state = _apply_A(a, state) + b * x_t[:, None, :, None]
        y = (c * state).sum(-1) + self.D * x_t[:, None]
        return self.out(rearrange(y, "b c h -> b (c h)").to(x_t.dtype)), state


@register("companion")
class CompanionSSM(_CompanionConvolution):
    """SpaceTime's companion SSM layer. Input and output (batch, length, d_model).

    Args:
        d_model: channels H.
        d_state: state size d of each companion matrix A = S + a e_dᵀ.
        heads: independent SSMs per channel; their outputs are mixed back to d_model.
        kernel_repeat: channels that share one (a, b, c) in groups of this size (divides d_model).
        max_a_norm: cap on ||a||_1 (< 1 keeps A stable, see :func:`capped_a`); None: a is free.
        lr: learning rate of a and b (None: the optimiser's); they never get weight decay.
        activation, output, dropout: what follows the SSM (see OutputProjection).
        companion_backend: backend of the companion kernel (None: $SSMZOO_BACKEND or "auto"; "fft"
            (O((d + ℓ) log)), "krylov", "reference"; see ``ssmzoo.ops.companion.dispatch``).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        heads: int = 1,
        kernel_repeat: int = 1,
        max_a_norm: float | None = 0.99,
        lr: float | None = 1e-3,
        activation: Literal["gelu", "silu", "relu", "tanh", "identity"] = "gelu",
        output: Literal["glu", "linear", "none"] = "glu",
        dropout: float = 0.0,
        companion_backend: str | None = None,
    ) -> None:
        super().__init__(d_model, d_state, heads, kernel_repeat, True, max_a_norm, lr, activation, output,
                         dropout, companion_backend)


@register("shift")
class ShiftSSM(_CompanionConvolution):
    """SpaceTime's shift SSM: A = S (a = 0), so k_l = cᵀSˡb is a learned FIR filter of d_state taps.

    Arguments as for :class:`CompanionSSM`, without ``max_a_norm``."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        heads: int = 1,
        kernel_repeat: int = 1,
        lr: float | None = 1e-3,
        activation: Literal["gelu", "silu", "relu", "tanh", "identity"] = "gelu",
        output: Literal["glu", "linear", "none"] = "glu",
        dropout: float = 0.0,
        companion_backend: str | None = None,
    ) -> None:
        super().__init__(d_model, d_state, heads, kernel_repeat, False, None, lr, activation, output,
                         dropout, companion_backend)


# -- preprocessing: fixed causal filters ---------------------------------------------------------
class _FixedFilter(SequenceLayer):
    """y_t = Σ_j taps[h, j] u_{t−j} per channel h, with fixed taps (d_model, W): a ShortConvolution
    with a fixed weight. State: the last W − 1 inputs, (batch, d_model, W − 1)."""

    def __init__(self, d_model: int, taps: Tensor) -> None:
        super().__init__(d_model, causal=True)
        # ShortConvolution's last tap multiplies the current input: taps[:, 0] here, hence the flip.
        self.conv = ShortConvolution(d_model, taps.shape[1], taps=taps.flip(-1))

    def _forward(
        self, x: Tensor, state: Tensor | None, lengths: Tensor | None, return_state: bool
    ) -> tuple[Tensor, Tensor | None]:
        if return_state:
            return self.conv(x, state, return_state=True)
        return self.conv(x, state), None

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The state: the last W − 1 inputs (batch, d_model, W − 1), zeros before the stream starts."""
        return self.conv.init_state(batch_size, device, dtype)

    def _step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.conv.step(x_t, state)


@register("differencing")
class Differencing(_FixedFilter):
    """Differencing of given orders: channel h outputs Δ^o u with o = orders[h % len(orders)]
    (Δu_t = u_t − u_{t−1}; the input is zero before the stream starts). No parameters."""

    def __init__(self, d_model: int, orders: list[int] = [1]) -> None:  # noqa: B006 (read only)
        check_int("Differencing", "d_model", d_model)
        orders = check_int_list("Differencing", "orders", orders, minimum=0)
        per_channel = [orders[h % len(orders)] for h in range(d_model)]
        taps = torch.zeros(d_model, max(per_channel) + 1)
        for h, order in enumerate(per_channel):
            for j in range(order + 1):  # Δ^o = Σ_j (−1)^j C(o, j) shift^j
                taps[h, j] = (-1) ** j * math.comb(order, j)
        super().__init__(d_model, taps)
        self.orders = orders


@register("moving_average_residual")
class MovingAverageResidual(_FixedFilter):
    """Moving-average residual: channel h outputs u_t − mean(u_{t−w+1..t}) with
    w = windows[h % len(windows)] (a causal window; zeros before the stream starts). No parameters."""

    def __init__(self, d_model: int, windows: list[int] = [4]) -> None:  # noqa: B006 (read only)
        check_int("MovingAverageResidual", "d_model", d_model)
        windows = check_int_list("MovingAverageResidual", "windows", windows, minimum=2)
        per_channel = [windows[h % len(windows)] for h in range(d_model)]
        taps = torch.zeros(d_model, max(per_channel))
        for h, w in enumerate(per_channel):
            taps[h, :w] = -1.0 / w
            taps[h, 0] += 1.0
        super().__init__(d_model, taps)
        self.windows = windows


# -- closed loop --------------------------------------------------------------------------------
@dataclass
class ClosedLoopOutput:
    """forecast (batch, horizon, d_model): cᵀx rolled in closed loop past the lag window;
    lag_output (batch, lag, d_model): cᵀx_t over the lag (the one-step-ahead prediction at t);
    input_prediction (batch, lag, d_model): û_t = kᵀx_t, the layer's prediction of u_{t+1}."""

    forecast: Tensor
    lag_output: Tensor
    input_prediction: Tensor


class ClosedLoopCompanionSSM(nn.Module):
    """SpaceTime's closed-loop companion SSM, the forecasting decoder (one SSM per channel).

    Over the lag window it reads u like a companion SSM (x_t = A x_{t−1} + b u_t). Past it, the
    next input is its own prediction û_t = kᵀx_t, so the state rolls as x_{t+1} = (A + b kᵀ) x_t
    and the forecast h steps after the last input is cᵀ(A + b kᵀ)^h x_{lag−1}.

    Args:
        d_model: channels H.
        d_state: state size d.
        horizon: forecast length.
        max_a_norm: cap on ||a||_1 (see :func:`capped_a`); None: a is free.
        lr: learning rate of a, b and k (None: the optimiser's); they never get weight decay.
    """

    def __init__(self, d_model: int, d_state: int = 64, horizon: int = 96, max_a_norm: float | None = 0.99,
                 lr: float | None = 1e-3) -> None:
        super().__init__()
        for arg, v in (("d_model", d_model), ("d_state", d_state), ("horizon", horizon)):
            check_int("ClosedLoopCompanionSSM", arg, v)
        check_float("ClosedLoopCompanionSSM", "max_a_norm", max_a_norm, above=0.0, below=1.0, optional=True)
        check_float("ClosedLoopCompanionSSM", "lr", lr, above=0.0, optional=True)
        self.d_model, self.d_state, self.horizon, self.max_a_norm = d_model, d_state, horizon, max_a_norm
        shape = (d_model, d_state)
        self.a = tag_param(nn.Parameter(torch.randn(shape) / d_state), lr=lr)
        self.b = tag_param(nn.Parameter(torch.randn(shape) / math.sqrt(d_state)), lr=lr)
        self.c = nn.Parameter(torch.randn(shape) / math.sqrt(d_state))
        self.k = tag_param(nn.Parameter(0.01 * torch.randn(shape)), lr=lr)

    def closed_loop_matrix(self) -> Tensor:
        """A + b kᵀ (d_model, d_state, d_state)."""
        return companion_matrix(capped_a(self.a, self.max_a_norm)) + self.b[:, :, None] * self.k[:, None, :]

    def forward(self, u: Tensor) -> ClosedLoopOutput:
        """u (batch, lag, d_model) -> :class:`ClosedLoopOutput`."""
        if not isinstance(u, Tensor) or u.dim() != 3 or u.shape[-1] != self.d_model or 0 in u.shape[:2]:
            raise ValueError(
                f"ClosedLoopCompanionSSM: u must have shape (batch >= 1, lag >= 1, d_model={self.d_model}), "
                f"got {tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__}"
            )
        if u.device != self.a.device or (u.dtype != self.a.dtype and not autocast_enabled(u.device)):
            raise ValueError(f"ClosedLoopCompanionSSM: u is {u.dtype} on {u.device} but the parameters are "
                             f"{self.a.dtype} on {self.a.device}; convert one to match with .to(...)")
        a = capped_a(self.a, self.max_a_norm)
        v = rearrange(u, "b l h -> b h l")
        lag = v.shape[-1]
        e = _last_unit(self.d_state, a)
        # three output vectors over the same states: c (output), k (next input), e_d (for the state)
        kernels = companion_kernel(a, self.b, torch.stack([self.c, self.k, e.expand_as(self.c)]), lag)
        tail = self.d_state + 1  # the final state reads only the last d + 1 inputs and state coordinates w
        if lag > tail:
            # w at those positions only, as a (d + 1) x lag Toeplitz product, not a third full-length FFT convolution
            y_lag, u_hat = fft_conv(v[:, None], kernels[:2]).unbind(1)
            w = _causal_conv_tail(v, kernels[2], tail)
            x_last = companion_final_state(a, self.b, v[..., -tail:], w, None)  # (B, H, d)
        else:
            y_lag, u_hat, w = fft_conv(v[:, None], kernels).unbind(1)
            x_last = companion_final_state(a, self.b, v, w, None)
        # rows cᵀ(A + b kᵀ)^h for h < horizon, by repeated squaring of the transposed matrix
        rows = krylov(self.closed_loop_matrix().transpose(-1, -2), self.c, self.horizon)  # (H, d, horizon)
        forecast = torch.einsum("hdn,bhd->bnh", rows, x_last)
        # contiguous: on these strided views the output MLP's activation backward is about 4x slower
        return ClosedLoopOutput(
            forecast=forecast.contiguous(),
            lag_output=rearrange(y_lag, "b h l -> b l h").contiguous(),
            input_prediction=rearrange(u_hat, "b h l -> b l h"),
        )
