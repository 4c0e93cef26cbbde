"""S4: the structured state space layer (Gu, Goel, Ré; ICLR 2022; PAPERS.md).

Per channel h, a continuous SSM with a diagonal-plus-low-rank state matrix A = Λ - P P*
(HiPPO-initialised, see ops/hippo.py), discretised by the bilinear rule with a learned step
Δ = exp(log_dt). The whole sequence is one causal convolution whose kernel K_l = C̄ Ā^l B̄ comes from
its generating function at the roots of unity: a Cauchy kernel plus a Woodbury correction
(ops/dplr.py). The learned output matrix is C̃ = C̄ (I - Ā^L) for the kernel length L = ``l_max``
(S4 §3.3), a constructor argument. An input longer than l_max gets the kernel of length l_max · 2^k
from C̃_2L = C̃_L (I + Ā^L), computed out of place from the parameters (differentiable; the
parameters themselves never change in ``forward``, so replicas that see different lengths stay equal).

Streaming: ``step`` runs the recurrence either with the dense discretised matrix (``step_mode="dense"``,
O(N²) per token) or in DPLR form (``"dplr"``, O(N) per token). The state is (batch, H, N) real:
the stored half of the conjugate-pair state as [Re x, Im x].
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from ..modules.checks import check_choice, check_int
from ..modules.fft_conv import ssm_convolution
from ..modules.output_projection import OutputProjection
from ..ops import cauchy as cauchy_op
from ..ops import dplr as ops
from ..ops.hippo import diagonal_init, nplr
from .base import SequenceLayer, register, tag_param
from .s4d import check_ssm_args

INITS = ("legs", "legt", "lagt", "fout", "diag-legs", "diag-inv", "diag-lin", "diag-real")
# Re Λ is parameterised as -exp(log_A_real); LegT/LagT/FouT have Re Λ = 0, kept just inside (S4 does the same).
MIN_DECAY = 1e-4


@register("s4")
class S4(SequenceLayer):
    """DPLR state space layer. Input and output (batch, length, d_model).

    Args:
        d_model: channels H.
        d_state: state size N (even; N/2 conjugate pairs are stored).
        channels: independent SSM kernels per input channel; outputs are mixed back to d_model.
        bidirectional: add an anti-causal kernel (then the layer is not causal and cannot step).
        init: "legs" (rank 1), "legt" (rank 2), "lagt" (rank 1), "fout" (rank 1): HiPPO DPLR; or the
            S4D diagonal inits "diag-legs", "diag-inv", "diag-lin", "diag-real" (rank 0, B = 1).
        dt_min, dt_max: range of the log-uniform init of Δ = exp(log_dt).
        lr: learning rate for Λ, P, B and log_dt (None: the optimiser's); they never get weight decay.
        activation, output, dropout: what follows the SSM (see OutputProjection).
        cauchy_backend: backend of the Cauchy kernel (None: $SSMZOO_BACKEND or "auto"; "reference",
            "chunked", "cpu", "keops"; see ``ssmzoo.ops.cauchy.dispatch``).
        step_mode: "dplr" (O(N) per token) or "dense" (the discretised matrix, O(N²)).
        l_max: the kernel length C̃ is learned for. Set it to the longest input you train on: shorter
            inputs use the first L taps of this kernel; longer ones double it (see the module docstring),
            which costs a few N x N matrix products per call.
    """

    supported_dtypes = (torch.float32, torch.float64)

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        channels: int = 1,
        bidirectional: bool = False,
        init: Literal["legs", "legt", "lagt", "fout", "diag-legs", "diag-inv", "diag-lin", "diag-real"] = "legs",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        lr: float | None = 1e-3,
        activation: Literal["gelu", "silu", "relu", "tanh", "identity"] = "gelu",
        output: Literal["glu", "linear", "none"] = "glu",
        dropout: float = 0.0,
        cauchy_backend: str | None = None,
        step_mode: Literal["dplr", "dense"] = "dplr",
        l_max: int = 1024,
    ) -> None:
        super().__init__(d_model, causal=not bidirectional)
        check_ssm_args("S4", d_state, channels, bidirectional, dt_min, dt_max, lr)
        check_choice("S4", "init", init, INITS)
        cauchy_op.dispatch.check_name(cauchy_backend, "S4", "cauchy_backend")
        check_choice("S4", "step_mode", step_mode, ("dplr", "dense"))
        check_int("S4", "l_max", l_max)
        self.d_state, self.channels, self.bidirectional, self.init = d_state, channels, bidirectional, init
        self.cauchy_backend, self.step_mode, self.l_max = cauchy_backend, step_mode, l_max
        h, half = d_model, d_state // 2
        kernels = channels * (2 if bidirectional else 1)

        if init.startswith("diag-"):
            lam = diagonal_init(init.removeprefix("diag-"), d_state)
            p = torch.zeros(0, half, dtype=torch.complex128)
            b = torch.ones(half, dtype=torch.complex128)
        else:
            lam, p, b, _ = nplr(init, d_state)
        log_dt = torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = tag_param(nn.Parameter(log_dt), lr=lr)
        self.log_A_real = tag_param(nn.Parameter(torch.log(lam.real.clamp(max=-MIN_DECAY).neg()).float().repeat(h, 1)), lr=lr)
        self.A_imag = tag_param(nn.Parameter(lam.imag.float().repeat(h, 1)), lr=lr)
        self.rank = p.shape[0]
        if self.rank:
            self.P = tag_param(nn.Parameter(torch.view_as_real(p.to(torch.complex64))[:, None].repeat(1, h, 1, 1)), lr=lr)
        else:
            self.register_parameter("P", None)
        self.B = tag_param(nn.Parameter(torch.view_as_real(b.to(torch.complex64)).repeat(h, 1, 1)), lr=lr)
        # C̄ ~ N(0, 1/2) per real/imag part; the parameter holds C̃ = C̄ (I - Ā^l_max) (set below).
        self.C = nn.Parameter(torch.randn(kernels, h, half, 2) * math.sqrt(0.5))
        self.D = nn.Parameter(torch.randn(channels, h))
        self.out = OutputProjection(channels * h, d_model, activation, output, dropout, owner="S4")
        with torch.no_grad():
            self.C.copy_(self._c_tilde_from(self.C))
        self._step_cache: tuple | None = None

    # -- parameters as complex tensors ----------------------------------------------------------
    def _ssm(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(Λ (H, n), P (r, H, n), B (H, n), Δ (H,))."""
        lam = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        p = torch.view_as_complex(self.P) if self.P is not None else lam.new_zeros(0, *lam.shape)
        return lam, p, torch.view_as_complex(self.B), torch.exp(self.log_dt)

    def _dense(self, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
        """(Ā (H, N, N), B̄ (H, N)) in real coordinates; float64 by default (N x N solves, cheap)."""
        cd = torch.complex128 if dtype == torch.float64 else torch.complex64
        lam, p, b, dt = self._ssm()
        a, b_real = ops.dense_real(lam.to(cd), p.to(cd), b.to(cd))
        return ops.bilinear(a, b_real, dt.to(dtype))

    # -- C̃ and the kernel length ----------------------------------------------------------------
    def _c_tilde_from(self, c_bar: Tensor) -> Tensor:
        """C̃ = C̄ (I - Ā^l_max) for C̄ (K, H, n, 2) (view_as_real); used once, at construction."""
        a_bar, _ = self._dense()
        eye = torch.eye(a_bar.shape[-1], dtype=a_bar.dtype, device=a_bar.device)
        c = ops.row_to_real(torch.view_as_complex(c_bar).to(torch.complex128))
        c = torch.einsum("khi,hij->khj", c, eye - torch.linalg.matrix_power(a_bar, self.l_max))
        return torch.view_as_real(ops.row_from_real(c)).to(c_bar.dtype)

    def c_tilde(self, length: int) -> tuple[Tensor, int]:
        """(C̃_L (K, H, n) complex, L) for the kernel length L = l_max · 2^k, the least >= ``length``.

        C̃_2L = C̄ (I - Ā^2L) = C̃_L (I + Ā^L) (S4 §3.3), computed from the parameters out of place and
        differentiably; the parameter C (= C̃ for l_max) is never written."""
        c = torch.view_as_complex(self.C)
        kernel_length = self.l_max
        if length <= kernel_length:
            return c, kernel_length
        a_bar, _ = self._dense()
        eye = torch.eye(a_bar.shape[-1], dtype=a_bar.dtype, device=a_bar.device)
        c_real = ops.row_to_real(c.to(torch.complex128))
        power = torch.linalg.matrix_power(a_bar, kernel_length)  # Ā^L, then squared as L doubles
        while kernel_length < length:
            c_real = torch.einsum("khi,hij->khj", c_real, eye + power)
            power = power @ power
            kernel_length *= 2
        return ops.row_from_real(c_real).to(c.dtype), kernel_length

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        # Checkpoints from before l_max kept the length their C̃ was set for in a buffer; C̃ is only
        # right for that length, so load it only into a layer built with l_max equal to it.
        saved = state_dict.pop(prefix + "kernel_length", None)
        if saved is not None and int(saved) != self.l_max:
            error_msgs.append(f"S4: the checkpoint's C is C̃ for kernel length {int(saved)}; build S4 with "
                              f"l_max={int(saved)} to load it (this layer has l_max={self.l_max})")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def output_matrix(self) -> Tensor:
        """C̄ (K, H, n) complex, recovered from C̃ = C̄ (I - Ā^l_max) (what stepping needs)."""
        a_bar, _ = self._dense()
        c = torch.view_as_complex(self.C).to(torch.complex128)
        eye = torch.eye(a_bar.shape[-1], dtype=a_bar.dtype, device=a_bar.device)
        m = eye - torch.linalg.matrix_power(a_bar, self.l_max)  # c_real = c̃_real m⁻¹  <=>  mᵀ c_realᵀ = c̃_realᵀ
        c_real = torch.linalg.solve(m.transpose(-1, -2), ops.row_to_real(c).permute(1, 2, 0)).permute(2, 0, 1)
        return ops.row_from_real(c_real).to(torch.view_as_complex(self.C).dtype)

    def kernel(self, length: int, states: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The convolution kernels (K, H, length): forward ones first, then backward ones; and, for
        states (batch, H, n) complex, their output contributions C̄ Ā^(l+1) s as (batch, K, H, length)."""
        c, kernel_length = self.c_tilde(length)
        lam, p, b, dt = self._ssm()
        cols = b[None]
        if states is not None:
            cols = torch.cat([cols, ops.state_columns(lam, p, states.to(lam.dtype), dt)], 0)
        k = ops.dplr_kernel(lam, p, cols, c, dt, kernel_length, backend=self.cauchy_backend)
        k = k[..., :length]
        if states is None:
            return k[:, 0], None
        return k[:, 0], rearrange(k[:, 1:], "k b h l -> b k h l")

    # -- contract -------------------------------------------------------------------------------
    def _forward(
        self, x: Tensor, state: Tensor | None, lengths: Tensor | None, return_state: bool
    ) -> tuple[Tensor, Tensor | None]:
        u = rearrange(x, "b l h -> b h l")
        length = u.shape[-1]
        s = ops.from_real(state) if state is not None else None
        k, k_state = self.kernel(length, s)
        y = ssm_convolution(x, k, self.channels, lengths)  # (B, C, H, L)
        y = y + self.D[None, :, :, None] * u[:, None]
        if k_state is not None:
            y = y + k_state.to(y.dtype)

        new_state = None
        if self.causal and return_state:  # the dense final-state scan costs O(B·H·L·N²)
            a_bar, b_bar = self._dense(x.dtype)
            bu = torch.einsum("hn,bhl->bhln", b_bar, u)
            new_state = ops.scan_final_state(a_bar, bu)
            if state is not None:
                new_state = new_state + torch.einsum("hij,bhj->bhi", torch.linalg.matrix_power(a_bar, length), state)
        y = rearrange(y, "b c h l -> b l (c h)").contiguous()  # see S4D: the activation's backward on the view is slow
        return self.out(y.to(x.dtype)), new_state

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The state: (batch, H, N) real, [Re x, Im x] of the N/2 stored conjugate-pair entries."""
        return torch.zeros(batch_size, self.d_model, self.d_state, dtype=dtype, device=device)

    def _step_setup(self, dtype: torch.dtype) -> tuple:
        """Everything one step needs; cached while no parameter changed and autograd is off."""
        key = (dtype, self.step_mode, tuple(t._version for t in self.parameters()),
               tuple(t.data_ptr() for t in self.parameters()))
        if not torch.is_grad_enabled() and self._step_cache is not None and self._step_cache[0] == key:
            return self._step_cache[1]
        cd = torch.complex128 if dtype == torch.float64 else torch.complex64
        c = self.output_matrix()[: self.channels]
        if self.step_mode == "dense":
            a_bar, b_bar = self._dense(dtype)
            setup = (a_bar, b_bar, ops.row_to_real(c).to(dtype))
        else:
            lam, p, b, dt = self._ssm()
            lam, p, b = lam.to(cd), p.to(cd), b.to(cd)
            e_inv, w = ops.dplr_step_setup(lam, p, dt.to(dtype))
            setup = (lam, p, b, dt.to(dtype), e_inv, w, c.to(cd))
        if not torch.is_grad_enabled():
            self._step_cache = (key, setup)
        return setup

    def _step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        setup = self._step_setup(x_t.dtype)
        if self.step_mode == "dense":
            a_bar, b_bar, c = setup
            state = torch.einsum("hij,bhj->bhi", a_bar, state) + b_bar * x_t[..., None]
            y = torch.einsum("khn,bhn->bkh", c, state)
        else:
            lam, p, b, dt, e_inv, w, c = setup
            x = ops.dplr_step(ops.from_real(state), x_t, lam, p, b, dt, e_inv, w)
            y = 2 * torch.einsum("khn,bhn->bkh", c, x).real
            state = ops.to_real(x).to(x_t.dtype)
        y = y + self.D * x_t[:, None]
        return self.out(rearrange(y, "b c h -> b (c h)").to(x_t.dtype)), state
