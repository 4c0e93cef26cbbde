"""Mamba-3 (Lahoti, Li, Chen, Wang, Bick, Kolter, Dao, Gu, "Mamba-3: Improved Sequence Modeling using State Space
Principles", arXiv 2603.15569), the block of mamba-ssm's ``mamba_ssm/modules/mamba3.py``:

    z, x, B, C, dd_dt, dd_A, trap, angles = in_proj(u)      # one projection, in this order
    B, C = RMSNorm(B), RMSNorm(C)                            # per d_state, one weight each (B_norm, C_norm)
    Δ = softplus(dd_dt + dt_bias),  A = min(-f(dd_A), -A_floor)   # data-dependent A; f the heavy-tail activation
    y = mamba3(x, Δ, A, B, C, trap, angles; B_bias, C_bias, D, ...)   # ops/mamba3: trapezoidal rule, rotary state
    y = y ⊙ silu(z)  (or, with is_outproj_norm, RMSNorm(y) ⊙ silu(z) per head)
    out = out_proj(y)

There is no short convolution (the trapezoid's two-token input and the B/C biases take its place) and no A_log:
A is produced per token. ``angles`` (one per rotated pair of d_state, ``rope_fraction`` of them) are shared by
the heads; each head turns them by its own Δ. MIMO (``is_mimo``) lifts x to ``mimo_rank`` inputs (``mimo_x``),
gates each with silu(z ⊙ mimo_z) and sums them back with ``mimo_o``.

Parameter names and shapes are mamba-ssm's, so its state dicts load by name: in_proj.weight (2·d_inner +
2·d_state·ngroups·R + 3·nheads + n_angles, d_model), dt_bias (nheads,), B_bias and C_bias (nheads, R, d_state)
(R = mimo_rank, 1 for SISO), B_norm.weight and C_norm.weight (d_state,), MIMO's mimo_x, mimo_z, mimo_o (nheads, R,
headdim), D (nheads,), norm.weight (d_inner,) with is_outproj_norm, out_proj.weight (d_model, d_inner).

What differs from mamba-ssm's module, and why:
- ``fuse_pregate_headwise_norm`` is not an argument: it only chooses whether mamba-ssm's MIMO kernel applies the
  head-wise output norm inside the kernel or after it; the result is the same, which is what this layer computes.
- mamba-ssm's kernels round B, C, x, z, trap and angles to bfloat16 inside (whatever the model's dtype) and keep
  the recurrent K and V states in the model's dtype; here every dtype computes in float32 (float64 for float64)
  and keeps the whole state in it, so outputs agree with its kernels to bfloat16 rounding, and exactly with its
  float32 reference functions (``mamba3_siso_step_ref``, ``mamba3_MIMO_step_ref`` in its tests).
- mamba-ssm's step keeps the phase unreduced (its chunked kernels reduce it mod 2π); here it is always reduced,
  which changes no output.
- the decode state is :class:`~ssmzoo.ops.mamba3.Mamba3State` (angle, ssm, k, v) with k (batch, nheads, d_state),
  or MIMO (batch, nheads, R, d_state); mamba-ssm's cache holds the same four tensors, k as (batch, R, nheads,
  d_state). Caches are not checkpoints: nothing needs to load them.
- ``dropout``, ``layer_idx``, ``n_layer``, ``device``, ``dtype`` and ``**kwargs``, which mamba-ssm's constructor
  accepts and ignores or uses for placement, are not arguments (``.to()`` places a layer here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..modules.checks import check_bool, check_float, check_int
from ..modules.rmsnorm import RMSNorm
from ..ops import mamba3 as mamba3_op
from ..ops.mamba3 import Mamba3State, mamba3
from ..ops.segments import Segments
from .base import SequenceLayer, register, tag_param


def heavy_tail_activation(x: Tensor) -> Tensor:
    """f(x) = 1 + x for x >= 0, 1 / (1 - x) for x < 0: positive, continuous, with a heavy tail towards 0 (A = -f
    never reaches 0 and grows only linearly); mamba-ssm's parameterisation of the data-dependent A."""
    return x.clamp_min(0) + torch.reciprocal(1 - x.clamp_max(0))


@register("mamba3")
class Mamba3(SequenceLayer):
    """Mamba-3 block, SISO or MIMO. Input and output (batch, length, d_model).

    Args:
        d_model: model width.
        d_state: N, the state size per head (B and C have N entries per group).
        expand: d_inner = expand · d_model channels of x.
        headdim: channels per head; nheads = d_inner / headdim.
        ngroups: groups of B and C, each shared by nheads / ngroups heads.
        rope_fraction: the share of d_state that turns (0.5 or 1.0, as mamba-ssm): int(d_state · rope_fraction),
            rounded down to even, entries in pairs, one angle each.
        dt_min, dt_max, dt_init_floor: softplus(dt_bias) starts log-uniform in [dt_min, dt_max], at least
            dt_init_floor (as Mamba-2).
        A_floor: A_t <= -A_floor.
        is_outproj_norm: RMSNorm(y) ⊙ silu(z) per head (weight ``norm``) instead of y ⊙ silu(z).
        is_mimo: the MIMO variant; mimo_rank: its rank R.
        chunk_size: the op's chunk length (mamba-ssm recommends 64 for SISO, 64 / R for MIMO).
        mamba3_backend: the op's backend (None: ``$SSMZOO_BACKEND`` or auto; see ``ssmzoo.ops.mamba3.dispatch``).

    State: a :class:`~ssmzoo.ops.mamba3.Mamba3State` (angle (batch, nheads, n_angles), ssm (batch, nheads,
    headdim, d_state), k (batch, nheads, d_state) or MIMO (batch, nheads, R, d_state), v (batch, nheads,
    headdim)), float32 for float32 and half inputs, float64 for float64.

    Packed documents (``segments=``): one pass; the op restarts the state at every document start (there is no
    convolution to mask).
    """

    supported_dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    segments_fast_path = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        rope_fraction: float = 0.5,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        A_floor: float = 1e-4,
        is_outproj_norm: bool = False,
        is_mimo: bool = False,
        mimo_rank: int = 4,
        chunk_size: int = 64,
        mamba3_backend: str | None = None,
    ) -> None:
        super().__init__(d_model, causal=True)
        for arg, value in (("d_state", d_state), ("expand", expand), ("headdim", headdim), ("ngroups", ngroups),
                           ("mimo_rank", mimo_rank), ("chunk_size", chunk_size)):
            check_int("Mamba3", arg, value)
        check_float("Mamba3", "rope_fraction", rope_fraction)
        if rope_fraction not in (0.5, 1.0):
            raise ValueError(f"Mamba3: rope_fraction must be 0.5 or 1.0 (as mamba-ssm), got {rope_fraction!r}")
        for arg, value in (("dt_min", dt_min), ("dt_max", dt_max), ("dt_init_floor", dt_init_floor)):
            check_float("Mamba3", arg, value, above=0.0)
        if dt_min > dt_max:
            raise ValueError(f"Mamba3: need dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        check_float("Mamba3", "A_floor", A_floor, at_least=0.0)
        check_bool("Mamba3", "is_outproj_norm", is_outproj_norm)
        check_bool("Mamba3", "is_mimo", is_mimo)
        mamba3_op.dispatch.check_name(mamba3_backend, "Mamba3", "mamba3_backend")
        d_inner = expand * d_model
        if d_inner % headdim:
            raise ValueError(f"Mamba3: headdim must divide expand * d_model = {d_inner}, got headdim={headdim}")
        nheads = d_inner // headdim
        if nheads % ngroups:
            raise ValueError(f"Mamba3: ngroups must divide the number of heads (expand * d_model / headdim = "
                             f"{nheads}), got ngroups={ngroups}")
        rotated = int(d_state * rope_fraction)
        rotated -= rotated % 2
        if rotated == 0:
            raise ValueError(f"Mamba3: d_state * rope_fraction must leave at least one pair of entries to rotate, "
                             f"got d_state={d_state}, rope_fraction={rope_fraction}")
        self.d_state, self.expand, self.headdim, self.ngroups = d_state, expand, headdim, ngroups
        self.d_inner, self.nheads, self.num_rope_angles = d_inner, nheads, rotated // 2
        self.is_mimo, self.mimo_rank = is_mimo, mimo_rank if is_mimo else 1
        self.is_outproj_norm, self.A_floor, self.chunk_size = is_outproj_norm, float(A_floor), chunk_size
        self.mamba3_backend = mamba3_backend

        R = self.mimo_rank
        self.in_proj = nn.Linear(d_model, sum(self._sizes()), bias=False)
        # softplus(dt_bias) log-uniform in [dt_min, dt_max] (Mamba's §3.6): dt_bias = softplus⁻¹(dt).
        dt = torch.exp(torch.rand(nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = tag_param(nn.Parameter(dt + torch.log(-torch.expm1(-dt))))
        # B and C biases start at 1: a data-independent component of B and C from the first step (the paper's BC bias).
        self.B_bias = nn.Parameter(torch.ones(nheads, R, d_state))
        self.C_bias = nn.Parameter(torch.ones(nheads, R, d_state))
        self.B_norm = RMSNorm(d_state, eps=1e-5)
        self.C_norm = RMSNorm(d_state, eps=1e-5)
        if is_mimo:
            self.mimo_x = nn.Parameter(torch.ones(nheads, R, headdim) / R)
            self.mimo_z = nn.Parameter(torch.ones(nheads, R, headdim))
            self.mimo_o = nn.Parameter(torch.ones(nheads, R, headdim) / R)
        self.D = tag_param(nn.Parameter(torch.ones(nheads)))
        self.norm = (RMSNorm(d_inner, eps=1e-5, group_size=headdim, norm_before_gate=True) if is_outproj_norm
                     else None)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    # -- contract ---------------------------------------------------------------------------------
    def _sizes(self) -> list[int]:
        """in_proj's output pieces, mamba-ssm's order: z, x, B, C, dd_dt, dd_A, trap, angles."""
        bc = self.d_state * self.ngroups * self.mimo_rank
        return [self.d_inner, self.d_inner, bc, bc, self.nheads, self.nheads, self.nheads, self.num_rope_angles]

    def _ssm(self, u: Tensor, state: Mamba3State | None, segments: Segments | None, return_state: bool,
             backend: str | None) -> tuple[Tensor, Mamba3State | None]:
        """u (batch, length, d_model) -> (out (batch, length, d_model), final state or None)."""
        z, x, B, C, dd_dt, dd_A, trap, angles = torch.split(self.in_proj(u), self._sizes(), dim=-1)
        z = rearrange(z, "b l (h p) -> b l h p", p=self.headdim)
        x = rearrange(x, "b l (h p) -> b l h p", p=self.headdim)
        B = self.B_norm(rearrange(B, "b l (r g n) -> b l r g n", r=self.mimo_rank, g=self.ngroups))
        C = self.C_norm(rearrange(C, "b l (r g n) -> b l r g n", r=self.mimo_rank, g=self.ngroups))
        compute = torch.promote_types(u.dtype, torch.float32)  # A and Δ in float32 at least (as mamba-ssm)
        A = (-heavy_tail_activation(dd_A.to(compute))).clamp(max=-self.A_floor)
        dt = F.softplus(dd_dt.to(compute) + self.dt_bias.to(compute))
        angles = angles[:, :, None].expand(-1, -1, self.nheads, -1)  # one set of angles for every head
        gate_in_op = self.norm is None
        if self.is_mimo:
            mimo = dict(mimo_x=self.mimo_x, mimo_z=self.mimo_z if gate_in_op else None,
                        mimo_o=self.mimo_o if gate_in_op else None)
            B_bias, C_bias = self.B_bias, self.C_bias
        else:
            mimo = {}
            B, C, B_bias, C_bias = B[:, :, 0], C[:, :, 0], self.B_bias[:, 0], self.C_bias[:, 0]
        y = mamba3(x, dt, A, B, C, trap, angles, B_bias=B_bias, C_bias=C_bias, D=self.D,
                   z=z if gate_in_op else None, **mimo, chunk_size=self.chunk_size, initial_state=state,
                   output_final_state=return_state, segments=segments, backend=backend)
        y, final = y if return_state else (y, None)
        if self.norm is not None:
            if self.is_mimo:  # per rank: RMSNorm(y^r) ⊙ silu(z ⊙ mimo_z^r), then the sum weighted by mimo_o
                z_r = rearrange(z[:, :, None] * self.mimo_z.transpose(0, 1), "b l r h p -> b l r (h p)")
                y = self.norm(rearrange(y, "b l r h p -> b l r (h p)"), z_r)
                y = (rearrange(y, "b l r (h p) -> b l r h p", p=self.headdim) * self.mimo_o.transpose(0, 1)).sum(2)
            else:
                y = rearrange(self.norm(rearrange(y, "b l h p -> b l (h p)"), rearrange(z, "b l h p -> b l (h p)")),
                              "b l (h p) -> b l h p", p=self.headdim)
        return self.out_proj(rearrange(y, "b l h p -> b l (h p)").to(u.dtype)), final

    def _forward(self, x: Tensor, state: Mamba3State | None, lengths: Tensor | None,
                 return_state: bool) -> tuple[Tensor, Mamba3State | None]:
        # Causal: right padding (lengths) cannot reach real tokens.
        return self._ssm(x, state, None, return_state, self.mamba3_backend)

    def _forward_segments(self, x: Tensor, state: Mamba3State | None, segments: Segments,
                          return_state: bool) -> tuple[Tensor, Mamba3State | None]:
        return self._ssm(x, state, segments, return_state, self.mamba3_backend)

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Mamba3State:
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        k = (batch_size, self.nheads, self.mimo_rank, self.d_state) if self.is_mimo else (batch_size, self.nheads,
                                                                                           self.d_state)
        return Mamba3State(*(torch.zeros(*shape, device=device, dtype=compute) for shape in (
            (batch_size, self.nheads, self.num_rope_angles), (batch_size, self.nheads, self.headdim, self.d_state),
            k, (batch_size, self.nheads, self.headdim))))

    def _step(self, x_t: Tensor, state: Mamba3State) -> tuple[Tensor, Mamba3State]:
        """One token in O(1): the recurrence's single step (the op's reference on one token: no chunks)."""
        y, state = self._ssm(x_t[:, None], state, None, True, "reference")
        return y[:, 0], state
