"""Mamba-2: the SSD block (Dao & Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality", 2024), section 7.1 and Figure 6.

    z, xBC, dt = in_proj(u)                        # one projection: A, B, C, Δ are produced in parallel
    x, B, C = SiLU(causal depthwise conv1d(xBC))   # width d_conv, over x, B and C together
    Δ = clamp(softplus(dt + dt_bias), dt_limit),  A_h = -exp(A_log_h)          # A scalar per head
    S_t = exp(Δ_t A_h) S_{t-1} + Δ_t x_t B_tᵀ,  y_t = S_t C_t + D_h x_t       # SSD, per head (ops/ssd)
    y = RMSNorm(y · SiLU(z))                       # gated norm, per group of heads (norm_before_gate=False)
    out = out_proj(y)

x has nheads = D_inner / headdim heads of headdim channels (D_inner = expand · d_model unless given); B and C have ngroups groups of d_state,
each group shared by nheads / ngroups heads (the paper's multi-value attention analogue, section 7.2).
Parameter names follow mamba-ssm's ``Mamba2`` module (in_proj, conv1d, dt_bias, A_log, D, norm, out_proj) and
the in_proj output order [z, x, B, C, dt], so its checkpoints and Hugging Face's ``Mamba2Mixer`` load by name.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..modules.checks import check_bool, check_float, check_int
from ..modules.padding import reverse_documents, reverse_padded
from ..modules.quantized import linear_matrix
from ..modules.rmsnorm import RMSNorm
from ..modules.short_conv import ShortConvolution
from ..modules.state_dict import rename_prefix
from ..ops import mamba2_lm_step as lm_step_op
from ..ops import ssd as ssd_op
from ..ops.mamba2_lm_step import Mamba2BlockWeights, Mamba2LMStepWeights
from ..ops.segments import Segments
from ..ops.ssd import ssd
from ..ops.ssd_step import ssd_step
from .base import DecodeStack, SequenceLayer, StackDecoder, register, tag_param


def _check_pair(arg: str, value: object, positive: bool, allow_inf: bool) -> tuple[float, float]:
    """A (low, high) pair of numbers with 0 < low (``positive``) or 0 <= low, low <= high, only high maybe inf."""
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) for v in value)
    ok = ok and math.isfinite(value[0]) and (allow_inf or math.isfinite(value[1])) and value[0] <= value[1]
    ok = ok and (value[0] > 0 if positive else value[0] >= 0)
    if not ok:
        raise ValueError(f"Mamba2: {arg} must be a pair (low, high) of {'' if allow_inf else 'finite '}numbers with "
                         f"0 {'<' if positive else '<='} low <= high, got {value!r}")
    return float(value[0]), float(value[1])


def _transposed(x: Tensor, out: Tensor | None = None) -> Tensor:
    """(batch, m, n) -> (batch, n, m) copied into ``out`` (new and contiguous by default), one matrix at a time: a
    2-D transposing copy between contiguous matrices takes ATen's blocked path on CPU, 1.4-3x faster at these sizes
    than the element-wise copy a 3-D one gets (whose strided accesses miss the TLB once a row spans pages)."""
    if out is None:
        out = x.new_empty(x.shape[0], x.shape[2], x.shape[1])
    for target, source in zip(out, x):
        target.copy_(source.t())
    return out


class _ChannelsLastSplit(torch.autograd.Function):
    """x, B, C out of the convolution's channels-first output (batch, conv_dim, length) as contiguous channels-last
    tensors (batch, length, size): the layout the SSD's chunks read without another copy. The backward writes their
    gradients, transposed, into one contiguous channels-first gradient (autograd's own transposes would hand the
    convolution's SiLU backward a strided gradient, several times slower on CPU)."""

    @staticmethod
    def forward(ctx, xBC: Tensor, sizes: list[int]) -> tuple[Tensor, ...]:
        ctx.sizes = sizes
        return tuple(_transposed(piece) for piece in xBC.split(sizes, dim=1))

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor, None]:
        given = next(g for g in grads if g is not None)
        out = given.new_empty(given.shape[0], sum(ctx.sizes), given.shape[1])
        for grad, piece in zip(grads, out.split(ctx.sizes, dim=1)):
            if grad is None:
                piece.zero_()
            else:
                _transposed(grad.contiguous(), out=piece)
        return out, None


def _add_direction(
    module: nn.Module, conv_dim: int, d_conv: int, conv_bias: bool, conv_init: float | None, nheads: int,
    d_D: int, dt_min: float, dt_max: float, dt_init_floor: float, A_range: tuple[float, float],
    causal_conv1d_backend: str | None,
) -> None:
    """Give ``module`` one direction's parameters: conv1d, dt_bias, A_log, D."""
    module.conv1d = ShortConvolution(conv_dim, d_conv, bias=conv_bias, activation="silu",
                                     causal_conv1d_backend=causal_conv1d_backend)
    if conv_init is not None:
        nn.init.uniform_(module.conv1d.weight, -conv_init, conv_init)
    # softplus(dt_bias) log-uniform in [dt_min, dt_max] (as Mamba, section 3.6): dt_bias = softplus⁻¹(dt)
    # = dt + log(1 - exp(-dt)).
    dt = torch.exp(torch.rand(nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    module.dt_bias = tag_param(nn.Parameter(dt + torch.log(-torch.expm1(-dt))))
    # A_h = -exp(A_log_h) < 0 keeps every head's decay exp(Δ A_h) in (0, 1).
    module.A_log = tag_param(nn.Parameter(torch.log(torch.empty(nheads).uniform_(*A_range))))
    module.D = tag_param(nn.Parameter(torch.ones(d_D)))


@register("mamba2")
class Mamba2(SequenceLayer):
    """Mamba-2 block. Input and output (batch, length, d_model).

    Args:
        d_model: model width.
        d_state: SSM state size N per head (the size of B and C per group).
        d_conv: width of the causal depthwise convolution over x, B and C (>= 1).
        conv_init: if given, the conv weight is initialised uniform in ±conv_init (else as nn.Conv1d).
        expand: D_inner = expand · d_model channels in x and z.
        d_inner: D_inner itself, instead of expand · d_model (Nemotron-H's heads × head_dim, Falcon-H1's d_ssm).
        headdim: channels per head P; nheads = D_inner / headdim.
        ngroups: groups of B and C (and of the gated norm); divides nheads.
        A_init_range: A_h = -exp(A_log_h) is initialised with -A_h uniform in this range (low > 0).
        D_has_hdim: D per channel (D_inner,) instead of per head (nheads,).
        rmsnorm: gated RMSNorm after the SSD; if False, y · SiLU(z) without a norm (and no ``norm`` parameter).
        norm_before_gate: RMSNorm(y) · SiLU(z) instead of RMSNorm(y · SiLU(z)).
        norm_eps: epsilon of that norm.
        dt_min, dt_max: softplus(dt_bias) is initialised log-uniform in [dt_min, dt_max].
        dt_init_floor: lower clamp of that initial Δ.
        dt_limit: Δ is clamped to this (low, high) range after the softplus (forward and step alike).
        bias: biases in in_proj and out_proj.
        out_proj_bias: a bias in out_proj (None: as ``bias``; Falcon-H1 sets them apart).
        in_proj_multipliers: (z, x, B, C, Δ) scalars multiplying those parts of in_proj's output (its bias
            included), Falcon-H1's µP ``ssm_multipliers`` (None: none).
        conv_bias: bias in the convolution.
        bidirectional: add a reverse direction for non-causal tasks (LRA): its own conv1d, dt_bias, A_log and D
            (under ``reverse.``; checkpoints that name it ``backward.``, its name until 0.1.0, load unchanged),
            sharing in_proj, the norm and out_proj; both directions' SSD outputs are summed before the gated norm
            (as the Mamba layer's ``bidirectional``). Padded batches (``lengths``) run the reverse direction from
            each sequence's last real token, packed ones from each document's. No state or step.
        chunk_size: chunk length of the SSD's chunked algorithm (results do not depend on it beyond rounding).
        ssd_backend: backend of the SSD (None: $SSMZOO_BACKEND or "auto"; "mamba_ssm", "triton", "cpu",
            "chunked", "reference"; see ``ssmzoo.ops.ssd.dispatch``).
        causal_conv1d_backend: backend of the convolution (None: $SSMZOO_BACKEND or "auto"; see
            ``ssmzoo.ops.causal_conv1d.dispatch``).

    State: a tuple ``(conv_state, ssm_state)``:
        conv_state (batch, D_inner + 2·ngroups·d_state, d_conv - 1), in the input's dtype: the last d_conv - 1
            inputs of the convolution (x, B, C before it; mamba-ssm's cache also keeps the current one);
        ssm_state (batch, nheads, headdim, d_state): S_t, as mamba-ssm's cache; float32 for float32 and half
            inputs, float64 for float64 (the SSD op's state dtype).

    Packed documents (``segments=``): one pass, neither the convolution nor the SSD reading across a document
    start; a bidirectional layer's reverse direction runs on each document reversed within its span.
    """

    supported_dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    # As Mamba's: a 16 x 1,024 prompt of a 4-layer d_model 256 LM prefilled in 1,152 instead of 1,573 ms (2-core
    # AMD EPYC, interleaved medians of 6) in pieces of 4,096 rows; 8,192-row pieces took 1,236 ms.
    prefill_rows = 4096
    segments_fast_path = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        conv_init: float | None = None,
        expand: int = 2,
        d_inner: int | None = None,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        D_has_hdim: bool = False,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        norm_eps: float = 1e-5,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, math.inf),
        bias: bool = False,
        out_proj_bias: bool | None = None,
        in_proj_multipliers: tuple[float, float, float, float, float] | None = None,
        conv_bias: bool = True,
        bidirectional: bool = False,
        chunk_size: int = 256,
        ssd_backend: str | None = None,
        causal_conv1d_backend: str | None = None,
    ) -> None:
        super().__init__(d_model, causal=not bidirectional)
        for arg, value in (("d_state", d_state), ("d_conv", d_conv), ("expand", expand), ("headdim", headdim),
                           ("ngroups", ngroups), ("chunk_size", chunk_size)):
            check_int("Mamba2", arg, value)
        check_float("Mamba2", "conv_init", conv_init, above=0.0, optional=True)
        for arg, value in (("D_has_hdim", D_has_hdim), ("rmsnorm", rmsnorm), ("norm_before_gate", norm_before_gate),
                           ("bias", bias), ("conv_bias", conv_bias), ("bidirectional", bidirectional)):
            check_bool("Mamba2", arg, value)
        check_float("Mamba2", "norm_eps", norm_eps, at_least=0.0)
        for arg, value in (("dt_min", dt_min), ("dt_max", dt_max), ("dt_init_floor", dt_init_floor)):
            check_float("Mamba2", arg, value, above=0.0)
        if dt_min > dt_max:
            raise ValueError(f"Mamba2: need dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        A_low, A_high = _check_pair("A_init_range", A_init_range, positive=True, allow_inf=False)
        self.dt_limit = _check_pair("dt_limit", dt_limit, positive=False, allow_inf=True)
        if d_inner is not None:
            check_int("Mamba2", "d_inner", d_inner)
        if out_proj_bias is not None:
            check_bool("Mamba2", "out_proj_bias", out_proj_bias)
        if in_proj_multipliers is not None:
            ok = isinstance(in_proj_multipliers, (tuple, list)) and len(in_proj_multipliers) == 5
            if ok:
                for value in in_proj_multipliers:
                    check_float("Mamba2", "in_proj_multipliers", value)
            else:
                raise ValueError(f"Mamba2: in_proj_multipliers must be 5 numbers (z, x, B, C, dt) or None, got "
                                 f"{in_proj_multipliers!r}")
            in_proj_multipliers = tuple(float(m) for m in in_proj_multipliers)
        ssd_op.dispatch.check_name(ssd_backend, "Mamba2", "ssd_backend")
        ShortConvolution.check_backend(causal_conv1d_backend, "Mamba2")
        # Each argument alone first (above), then how they fit together.
        inner = "d_inner" if d_inner is not None else "expand * d_model"
        d_inner = expand * d_model if d_inner is None else d_inner
        if d_inner % headdim:
            raise ValueError(f"Mamba2: headdim must divide {inner} = {d_inner}, got headdim={headdim}")
        nheads = d_inner // headdim
        if nheads % ngroups:
            raise ValueError(f"Mamba2: ngroups must divide the number of heads ({inner} / headdim = "
                             f"{nheads}), got ngroups={ngroups}")
        self.d_state, self.d_conv, self.expand, self.headdim, self.ngroups = d_state, d_conv, expand, headdim, ngroups
        self.d_inner, self.nheads, self.chunk_size = d_inner, nheads, chunk_size
        self.conv_dim = d_inner + 2 * ngroups * d_state
        self.D_has_hdim, self.rmsnorm = D_has_hdim, rmsnorm
        self.ssd_backend, self.causal_conv1d_backend = ssd_backend, causal_conv1d_backend

        self.in_proj = nn.Linear(d_model, d_inner + self.conv_dim + nheads, bias=bias)  # [z, x, B, C, dt]
        direction = dict(conv_dim=self.conv_dim, d_conv=d_conv, conv_bias=conv_bias, conv_init=conv_init,
                         nheads=nheads, d_D=d_inner if D_has_hdim else nheads, dt_min=dt_min, dt_max=dt_max,
                         dt_init_floor=dt_init_floor, A_range=(A_low, A_high),
                         causal_conv1d_backend=causal_conv1d_backend)
        _add_direction(self, **direction)  # the forward (causal) direction, under mamba-ssm's names
        self.norm = (RMSNorm(d_inner, eps=norm_eps, group_size=d_inner // ngroups, norm_before_gate=norm_before_gate)
                     if rmsnorm else None)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias if out_proj_bias is None else out_proj_bias)
        self.in_proj_multipliers = in_proj_multipliers
        if in_proj_multipliers is not None:  # x, B and C leave in_proj as one tensor: one multiplier per channel
            m_x, m_B, m_C = in_proj_multipliers[1:4]
            sizes = (d_inner, ngroups * d_state, ngroups * d_state)
            self.register_buffer("xBC_multipliers", torch.cat([torch.full((n,), m) for n, m in zip(sizes, (m_x, m_B, m_C))]),
                                 persistent=False)
        self.bidirectional = bidirectional
        self.reverse: nn.Module | None = None
        if bidirectional:  # created last, so a causal layer's initial weights do not depend on this option
            self.reverse = nn.Module()
            _add_direction(self.reverse, **direction)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        rename_prefix(state_dict, prefix, "backward", "reverse")  # the reverse direction's name until 0.1.0
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # -- contract ---------------------------------------------------------------------------------
    def _D(self, direction: nn.Module | None = None) -> Tensor:
        """D of ``direction`` (self: the forward one; ``self.reverse``), per head or (heads, headdim)."""
        D = (self if direction is None else direction).D
        return rearrange(D, "(h p) -> h p", p=self.headdim) if self.D_has_hdim else D

    def _A(self, direction: nn.Module | None = None) -> Tensor:
        A_log = (self if direction is None else direction).A_log
        return -torch.exp(A_log.to(torch.promote_types(A_log.dtype, torch.float32)))

    def _forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None, lengths: Tensor | None, return_state: bool
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        # Causal: right padding (lengths) cannot reach real tokens, so the forward direction needs nothing here.
        return self._directions(x, state, return_state, None, lambda t: reverse_padded(t, lengths))

    def _forward_segments(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None, segments: Segments, return_state: bool
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Packed documents in one pass: neither the convolution nor the SSD reads across a document start (both
        ops take the segments); the reverse direction runs on each document reversed within its span. States are
        per document."""
        return self._directions(x, state, return_state, segments, lambda t: reverse_documents(t, segments))

    def _directions(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None, return_state: bool, segments: Segments | None,
        reverse: Callable[[Tensor], Tensor],
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """The forward direction, and the reverse one on the sequences ``reverse`` turns around."""
        conv_state, ssm_state = state if state is not None else (None, None)
        z, xBC, dt = self._project(x)
        xBC = rearrange(xBC, "b d l -> b l d")  # a view: the convolution reads the channels-first tensor itself
        y, conv_state, ssm_state = self._direction(self, xBC, dt, z, conv_state, ssm_state, return_state, segments)
        if self.reverse is not None:
            y_rev, _, _ = self._direction(self.reverse, reverse(xBC), reverse(dt), reverse(z), None, None, False,
                                          segments)
            y = y + reverse(y_rev)
        return self._output(y, z), ((conv_state, ssm_state) if return_state else None)

    def _output(self, y: Tensor, z: Tensor) -> Tensor:
        y = rearrange(y, "b l h p -> b l (h p)")
        if self.norm is not None:
            y = self.norm(y, z)
        return self.out_proj(y)

    def _direction(
        self, m: nn.Module, xBC: Tensor, dt: Tensor, z: Tensor, conv_state: Tensor | None, ssm_state: Tensor | None,
        return_state: bool, segments: Segments | None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The convolution and the SSD of one direction (``m`` holds its parameters): xBC (batch, length,
        conv_dim) -> y (batch, length, nheads, headdim) and, when ``return_state``, the final states."""
        xBC = m.conv1d(xBC, conv_state, return_state, segments)
        if return_state:
            xBC, conv_state = xBC
        sizes = [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state]
        # The convolution's output is channels first (a transposed view here).
        xs, B, C = _ChannelsLastSplit.apply(rearrange(xBC, "b l d -> b d l"), sizes)
        y = self._ssd(m, xs, B, C, dt, z, ssm_state, return_state, segments)
        y, ssm_state = y if return_state else (y, None)
        return y, conv_state, ssm_state

    def _ssd(self, m: nn.Module, xs: Tensor, B: Tensor, C: Tensor, dt: Tensor, z: Tensor, ssm_state: Tensor | None,
             return_state: bool, segments: Segments | None) -> Tensor | tuple[Tensor, Tensor]:
        """The SSD of direction ``m`` on channels-last x, B, C; the final state is asked for only when wanted
        (fused kernels, mamba-ssm's, serve the other calls)."""
        return ssd(
            rearrange(xs, "b l (h p) -> b l h p", p=self.headdim), dt, self._A(m),
            rearrange(B, "b l (g n) -> b l g n", g=self.ngroups), rearrange(C, "b l (g n) -> b l g n", g=self.ngroups),
            chunk_size=self.chunk_size, D=self._D(m),
            z=None if self.rmsnorm else rearrange(z, "b l (h p) -> b l h p", p=self.headdim),
            dt_bias=m.dt_bias, dt_softplus=True, dt_limit=self.dt_limit, backend=self.ssd_backend,
            initial_state=ssm_state, output_final_state=return_state, segments=segments,
        )

    def _project(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """in_proj (one weight, mamba-ssm's [z, x, B, C, dt] layout) as three products: z (batch, length, D_inner)
        and dt (batch, length, nheads) channels last, for the norm and the SSD; x, B, C (batch, conv_dim, length)
        channels first, the layout the convolution reads, straight out of the product (no transposing copy)."""
        sizes = [self.d_inner, self.conv_dim, self.nheads]
        w_z, w_xBC, w_dt = self.in_proj.weight.split(sizes)
        b_z, b_xBC, b_dt = self.in_proj.bias.split(sizes) if self.in_proj.bias is not None else (None, None, None)
        xBC = torch.matmul(w_xBC, u.mT)
        if b_xBC is not None:
            xBC = xBC + b_xBC[:, None]
        z, dt = F.linear(u, w_z, b_z), F.linear(u, w_dt, b_dt)
        if self.in_proj_multipliers is not None:
            z, xBC, dt = self._multiplied(z, xBC, dt, channels_first=True)
        return z, xBC, dt

    def _multiplied(self, z: Tensor, xBC: Tensor, dt: Tensor, channels_first: bool) -> tuple[Tensor, Tensor, Tensor]:
        """in_proj's parts times ``in_proj_multipliers`` (xBC (..., conv_dim, length) when channels_first)."""
        m_z, m_dt = self.in_proj_multipliers[0], self.in_proj_multipliers[4]
        m_xBC = self.xBC_multipliers.to(xBC.dtype)
        return z * m_z, xBC * (m_xBC[:, None] if channels_first else m_xBC), dt * m_dt

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        conv_state = torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype)
        ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                                dtype=torch.promote_types(dtype, torch.float32))
        return conv_state, ssm_state

    def block_weights(self) -> Mamba2BlockWeights:
        """The parameters and settings as the ``mamba2_lm_step`` op takes them (matrices in their stored form:
        float, or ``LanguageModel.quantize``'s int8 / bfloat16)."""
        norm = self.norm
        return Mamba2BlockWeights(
            linear_matrix(self.in_proj), self.in_proj.bias, self.conv1d._taps(), self.conv1d.bias, self.dt_bias,
            self.A_log, self.D, None if norm is None else norm.weight, linear_matrix(self.out_proj), self.out_proj.bias,
            self.ngroups, self.d_inner // self.ngroups if norm is None else norm.group_size,
            False if norm is None else norm.norm_before_gate, 0.0 if norm is None else norm.eps, self.dt_limit)

    @classmethod
    def lm_step_weights(cls, stack: DecodeStack) -> Mamba2LMStepWeights | None:
        """The stack's weights as the ``mamba2_lm_step`` op takes them, or None unless every block is a plain causal
        Mamba-2 block (no MLP, no in_proj multipliers, an ungrouped RMSNorm with the final norm's epsilon)."""
        d_model = stack.embedding.shape[1]
        plain = all(type(b.mixer) is cls and b.mixer.causal and b.mixer.in_proj_multipliers is None and b.mlp is None
                    and b.norm is not None and getattr(b.norm, "group_size", None) == d_model
                    and b.norm.eps == stack.norm_f.eps and getattr(stack.norm_f, "group_size", None) == d_model
                    for b in stack.blocks)
        if not plain:
            return None
        return Mamba2LMStepWeights(stack.embedding, tuple(b.norm.weight for b in stack.blocks),
                                   tuple(b.mixer.block_weights() for b in stack.blocks), stack.norm_f.weight,
                                   stack.head, stack.norm_f.eps)

    @classmethod
    def stack_decoder(cls, stack: DecodeStack) -> StackDecoder | None:
        """A stack of plain Mamba-2 blocks (``lm_step_weights``) decodes through the ``mamba2_lm_step`` op: the whole
        token in one C++ call where it serves, the weights packed once per generate call."""
        weights = cls.lm_step_weights(stack)
        if weights is None:
            return None
        # A layer built to avoid the fused kernels steps with the PyTorch formulas.
        pytorch_step = any(b.mixer.ssd_backend == "reference" for b in stack.blocks)
        backend = stack.backend if stack.backend is not None else ("reference" if pytorch_step else None)
        lm_step_op.dispatch.check_name(backend, "LanguageModel", "decode_backend")
        return lm_step_op.mamba2_lm_stepper(weights, backend=backend)

    def _step(self, x_t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One token in O(1): the convolution over the cached window, then one SSD step (ops/ssd_step)."""
        conv_state, ssm_state = state
        z, xBC, dt = torch.split(self.in_proj(x_t), [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if self.in_proj_multipliers is not None:
            z, xBC, dt = self._multiplied(z, xBC, dt, channels_first=False)
        xBC, conv_state = self.conv1d.step(xBC, conv_state)
        xs, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        y, ssm_state = ssd_step(  # the fused C++ step where it serves (generation), else ssd_update's formulas
            rearrange(xs, "b (h p) -> b h p", p=self.headdim), dt, self._A(),
            rearrange(B, "b (g n) -> b g n", g=self.ngroups), rearrange(C, "b (g n) -> b g n", g=self.ngroups),
            ssm_state, D=self._D(), z=None if self.rmsnorm else rearrange(z, "b (h p) -> b h p", p=self.headdim),
            dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.dt_limit,
        )
        y = rearrange(y, "b h p -> b (h p)")
        if self.norm is not None:
            y = self.norm(y, z)
        return self.out_proj(y), (conv_state, ssm_state)
