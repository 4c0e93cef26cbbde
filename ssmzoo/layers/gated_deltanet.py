"""Gated DeltaNet: the gated delta rule block (Yang, Kautz, Hatamizadeh, "Gated Delta Networks: Improving Mamba2
with Delta Rule", ICLR 2025, arXiv 2412.06464, section 3.4 and Figure 1), as Qwen3-Next's linear-attention layer
(transformers' ``Qwen3NextGatedDeltaNet``) builds it:

    q, k, v, z = in_proj_qkvz(x);  b, a = in_proj_ba(x)          # grouped per key head (see _split)
    q, k, v = SiLU(causal depthwise conv1d([q, k, v]))          # width conv_kernel_size, no bias
    q, k = q / ‖q‖, k / ‖k‖                                     # L2 per head
    β = sigmoid(b),  log α = g = −exp(A_log) · softplus(a + dt_bias)   # per value head
    o = gated delta rule(q, k, v, g, β)                         # ops/gated_delta, scale head_k_dim^-½
    y = out_proj(RMSNorm(o) · SiLU(z))                          # gated norm per value head (norm before the gate)

num_k_heads heads of head_k_dim channels for q and k, num_v_heads (a multiple) of head_v_dim for v and z; value
head h reads key head h // (num_v_heads / num_k_heads). Parameter names and layouts are Qwen3-Next's (in_proj_qkvz,
in_proj_ba, conv1d, dt_bias, A_log, norm, out_proj), so one transformers ``Qwen3NextGatedDeltaNet`` state dict
loads into this layer unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..modules.checks import check_float, check_int
from ..modules.rmsnorm import RMSNorm
from ..modules.short_conv import ShortConvolution
from ..ops import gated_delta as gated_delta_op
from ..ops.gated_delta import gated_delta_rule, gated_delta_step
from ..ops.segments import Segments
from .base import SequenceLayer, register, tag_param


def _l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(Σ x² + eps) over the last dimension (fla's and transformers' formula)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


@register("gated_deltanet")
class GatedDeltaNet(SequenceLayer):
    """Gated DeltaNet block (causal). Input and output (batch, length, d_model).

    Args:
        d_model: model width (Qwen3-Next's hidden_size).
        num_k_heads: query/key heads (linear_num_key_heads).
        num_v_heads: value heads (linear_num_value_heads), a multiple of num_k_heads.
        head_k_dim: channels per query/key head (linear_key_head_dim): the state is head_k_dim × head_v_dim.
        head_v_dim: channels per value head (linear_value_head_dim).
        conv_kernel_size: width of the causal depthwise convolution over q, k and v (linear_conv_kernel_dim).
        norm_eps: epsilon of the gated RMSNorm (rms_norm_eps).
        A_init_range: A = exp(A_log) is initialised uniform in this range (0 < low <= high).
        dt_min, dt_max: softplus(dt_bias) is initialised log-uniform in [dt_min, dt_max].
        dt_init_floor: lower clamp of that initial value.
        chunk_size: chunk length of the op's chunked backends (results do not depend on it beyond rounding).
        gated_delta_backend: backend of the op (None: $SSMZOO_BACKEND or "auto"; "triton", "cpu", "chunked",
            "reference"; see ``ssmzoo.ops.gated_delta.dispatch``).
        causal_conv1d_backend: backend of the convolution (see ``ssmzoo.ops.causal_conv1d.dispatch``).

    State: a tuple ``(conv_state, recurrent_state)``:
        conv_state (batch, 2·num_k_heads·head_k_dim + num_v_heads·head_v_dim, conv_kernel_size − 1), in the
            input's dtype: the last inputs of the convolution (q, k, v before it);
        recurrent_state (batch, num_v_heads, head_k_dim, head_v_dim), key-first as transformers' cache; float32
            for float32 and half inputs, float64 for float64.

    Packed documents (``segments=``): one pass; the convolution reads no tap across a document start and the op
    restarts its state there. States are per document.
    """

    supported_dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    segments_fast_path = True

    def __init__(
        self,
        d_model: int,
        num_k_heads: int = 4,
        num_v_heads: int = 8,
        head_k_dim: int = 64,
        head_v_dim: int = 64,
        conv_kernel_size: int = 4,
        norm_eps: float = 1e-6,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = 64,
        gated_delta_backend: str | None = None,
        causal_conv1d_backend: str | None = None,
    ) -> None:
        super().__init__(d_model, causal=True)
        name = "GatedDeltaNet"
        for arg, value in (("num_k_heads", num_k_heads), ("num_v_heads", num_v_heads), ("head_k_dim", head_k_dim),
                           ("head_v_dim", head_v_dim), ("conv_kernel_size", conv_kernel_size),
                           ("chunk_size", chunk_size)):
            check_int(name, arg, value)
        check_float(name, "norm_eps", norm_eps, above=0.0)
        for arg, value in (("dt_min", dt_min), ("dt_max", dt_max), ("dt_init_floor", dt_init_floor)):
            check_float(name, arg, value, above=0.0)
        ok = isinstance(A_init_range, (tuple, list)) and len(A_init_range) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in A_init_range)
        if not ok or not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"{name}: A_init_range must be a pair (low, high) of finite numbers with 0 < low <= high, "
                             f"got {A_init_range!r}")
        if dt_min > dt_max:
            raise ValueError(f"{name}: need dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        gated_delta_op.dispatch.check_name(gated_delta_backend, name, "gated_delta_backend")
        ShortConvolution.check_backend(causal_conv1d_backend, name)
        if num_v_heads % num_k_heads:
            raise ValueError(f"{name}: num_v_heads must be a multiple of num_k_heads={num_k_heads}, "
                             f"got num_v_heads={num_v_heads}")
        self.num_k_heads, self.num_v_heads, self.head_k_dim, self.head_v_dim = (num_k_heads, num_v_heads, head_k_dim,
                                                                                head_v_dim)
        self.key_dim, self.value_dim = num_k_heads * head_k_dim, num_v_heads * head_v_dim
        self.conv_kernel_size, self.chunk_size = conv_kernel_size, chunk_size
        self.conv_dim = 2 * self.key_dim + self.value_dim
        self.gated_delta_backend = gated_delta_backend

        self.in_proj_qkvz = nn.Linear(d_model, 2 * self.key_dim + 2 * self.value_dim, bias=False)
        self.in_proj_ba = nn.Linear(d_model, 2 * num_v_heads, bias=False)
        self.conv1d = ShortConvolution(self.conv_dim, conv_kernel_size, bias=False, activation="silu",
                                       causal_conv1d_backend=causal_conv1d_backend)
        # softplus(dt_bias) log-uniform in [dt_min, dt_max] (as Mamba-2): dt_bias = dt + log(1 − exp(−dt)).
        dt = torch.exp(torch.rand(num_v_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = tag_param(nn.Parameter(dt + torch.log(-torch.expm1(-dt))))
        self.A_log = tag_param(nn.Parameter(torch.log(torch.empty(num_v_heads).uniform_(*A_init_range))))
        self.norm = RMSNorm(head_v_dim, eps=norm_eps, norm_before_gate=True)
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)

    # -- projections ------------------------------------------------------------------------------
    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The two input projections of x (..., d_model) in Qwen3-Next's layout: in_proj_qkvz holds, per key head,
        [q (head_k_dim), k (head_k_dim), v (r·head_v_dim), z (r·head_v_dim)] with r = num_v_heads / num_k_heads;
        in_proj_ba, per key head, [b (r), a (r)]. Returns qkv (..., conv_dim) as the convolution reads it
        ([all q, all k, all v]), z (..., num_v_heads, head_v_dim), b and a (..., num_v_heads)."""
        r = self.num_v_heads // self.num_k_heads
        dk, dv = self.head_k_dim, self.head_v_dim
        qkvz = rearrange(self.in_proj_qkvz(x), "... (h c) -> ... h c", h=self.num_k_heads)
        q, k, v, z = qkvz.split([dk, dk, r * dv, r * dv], dim=-1)
        ba = rearrange(self.in_proj_ba(x), "... (h c) -> ... h c", h=self.num_k_heads)
        b, a = (rearrange(t, "... h r -> ... (h r)") for t in ba.split([r, r], dim=-1))
        qkv = torch.cat([rearrange(q, "... h d -> ... (h d)"), rearrange(k, "... h d -> ... (h d)"),
                         rearrange(v, "... h (r d) -> ... (h r d)", r=r)], dim=-1)
        return qkv, rearrange(z, "... h (r d) -> ... (h r) d", r=r), b, a

    def _heads(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The convolution's output (..., conv_dim) as L2-normalised q, k (..., num_k_heads, head_k_dim) and v
        (..., num_v_heads, head_v_dim), in float32 for half inputs (the op computes in float32 anyway)."""
        dtype = torch.promote_types(qkv.dtype, torch.float32)
        q, k, v = qkv.to(dtype).split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q, k = (_l2norm(rearrange(t, "... (h d) -> ... h d", d=self.head_k_dim)) for t in (q, k))
        return q, k, rearrange(v, "... (h d) -> ... h d", d=self.head_v_dim)

    def _gates(self, b: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        """β = sigmoid(b) and g = log α = −exp(A_log) · softplus(a + dt_bias), in float32 (float64 for float64)."""
        dtype = torch.promote_types(a.dtype, torch.float32)
        g = -torch.exp(self.A_log.to(dtype)) * F.softplus(a.to(dtype) + self.dt_bias.to(dtype))
        return torch.sigmoid(b.to(dtype)), g

    def _output(self, o: Tensor, z: Tensor, dtype: torch.dtype) -> Tensor:
        y = self.norm(o, z.to(o.dtype))
        return self.out_proj(rearrange(y, "... h d -> ... (h d)").to(dtype))

    # -- contract ---------------------------------------------------------------------------------
    def _forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None, lengths: Tensor | None, return_state: bool
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        # Causal: right padding (lengths) cannot reach real tokens.
        conv_state, recurrent_state = state if state is not None else (None, None)
        qkv, z, b, a = self._split(x)
        qkv = self.conv1d(qkv, conv_state, return_state)
        if return_state:
            qkv, conv_state = qkv
        return self._mix(x, qkv, z, b, a, recurrent_state, return_state, conv_state, None)

    def _forward_segments(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None, segments: Segments, return_state: bool
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        conv_state, recurrent_state = state if state is not None else (None, None)
        qkv, z, b, a = self._split(x)
        qkv, conv_state = self._conv_documents(qkv, segments, conv_state, return_state)
        return self._mix(x, qkv, z, b, a, recurrent_state, return_state, conv_state, segments)

    def _mix(self, x: Tensor, qkv: Tensor, z: Tensor, b: Tensor, a: Tensor, recurrent_state: Tensor | None,
             return_state: bool, conv_state: Tensor | None,
             segments: Segments | None) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        q, k, v = self._heads(qkv)
        beta, g = self._gates(b, a)
        out = gated_delta_rule(q, k, v, g, beta, chunk_size=self.chunk_size, initial_state=recurrent_state,
                               output_final_state=return_state, segments=segments, backend=self.gated_delta_backend)
        o, recurrent_state = out if return_state else (out, None)
        return self._output(o, z, x.dtype), ((conv_state, recurrent_state) if return_state else None)

    def _conv_documents(self, qkv: Tensor, segments: Segments, conv_state: Tensor | None,
                        return_state: bool) -> tuple[Tensor, Tensor | None]:
        """The convolution of packed documents, tap by tap: tap j (lag j) reads x_{t−j} when it lies in t's document,
        else that document's initial conv state (or zero). qkv (batch, length, conv_dim); conv states
        (num_docs, conv_dim, conv_kernel_size − 1), oldest input first."""
        w = self.conv_kernel_size - 1
        weight = rearrange(self.conv1d.weight, "d 1 k -> k d").to(qkv.dtype)  # row w multiplies x_t
        length = qkv.shape[1]
        pos, doc = segments.positions, segments.doc
        state = conv_state.to(qkv.dtype) if conv_state is not None else None
        y = qkv * weight[w]
        for lag in range(1, w + 1):
            shifted = F.pad(qkv, (0, 0, lag, 0))[:, :length]
            before = (state[doc, :, (w - lag + pos).clamp(0, w - 1)] if state is not None
                      else torch.zeros((), dtype=qkv.dtype, device=qkv.device))
            y = y + weight[w - lag] * torch.where((pos >= lag)[..., None], shifted, before)
        y = F.silu(y)
        if not return_state:
            return y, None
        # Each document's last w inputs: positions stop − w .. stop − 1, those before its start from its state.
        spans = torch.tensor([[s.row, s.start, s.stop] for s in segments.spans], device=qkv.device)
        row, start, stop = spans.unbind(-1)
        where = stop[:, None] - w + torch.arange(w, device=qkv.device)  # (num_docs, w)
        inside = where >= start[:, None]
        taken = qkv[row[:, None], where.clamp(min=0)]  # (num_docs, w, conv_dim)
        if state is not None:
            slot = (where - start[:, None] + w).clamp(min=0, max=max(w - 1, 0))
            earlier = rearrange(state, "k d w -> k w d").gather(1, slot[..., None].expand(-1, -1, qkv.shape[-1]))
        else:
            earlier = torch.zeros_like(taken)
        return y, rearrange(torch.where(inside[..., None], taken, earlier), "k w d -> k d w")

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        conv_state = torch.zeros(batch_size, self.conv_dim, self.conv_kernel_size - 1, device=device, dtype=dtype)
        recurrent_state = torch.zeros(batch_size, self.num_v_heads, self.head_k_dim, self.head_v_dim, device=device,
                                      dtype=torch.promote_types(dtype, torch.float32))
        return conv_state, recurrent_state

    def _step(self, x_t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One token in O(1): the convolution over the cached window, then one step of the rule (ops/gated_delta)."""
        conv_state, recurrent_state = state
        qkv, z, b, a = self._split(x_t)
        qkv, conv_state = self.conv1d.step(qkv, conv_state)
        q, k, v = self._heads(qkv)
        beta, g = self._gates(b, a)
        o, recurrent_state = gated_delta_step(q, k, v, g, beta, recurrent_state)
        return self._output(o, z, x_t.dtype), (conv_state, recurrent_state)
