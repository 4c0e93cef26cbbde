"""Mamba: the selective state space block (Gu, Dao; "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces", 2023), section 3 and Figure 3.

    x, z = in_proj(u)                              # two branches of width D_inner = expand · d_model
    x = SiLU(causal depthwise conv1d(x))           # width d_conv
    Δ, B, C = softplus(dt_proj(x_proj_Δ(x)) + b_Δ), x_proj_B(x), x_proj_C(x)   # input dependent (Alg. 2)
    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t,  y_t = C_t · h_t + D x_t            # selective scan, ZOH/Euler
    out = out_proj(y · SiLU(z))

Parameter names follow mamba-ssm's ``Mamba`` module (in_proj, conv1d, x_proj, dt_proj, A_log, D,
out_proj), so its checkpoints and Hugging Face's ``MambaMixer`` load by name.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules.checks import check_bool, check_choice, check_float, check_int
from ..modules.padding import reverse_documents, reverse_padded
from ..modules.quantized import linear_matrix
from ..modules.short_conv import ShortConvolution
from ..modules.state_dict import rename_prefix
from ..ops import mamba_inner as inner_op
from ..ops import mamba_lm_step as lm_step_op
from ..ops import selective_scan as scan_op
from ..ops.mamba_inner import MambaInnerWeights, mamba_inner
from ..ops.mamba_lm_step import MambaLMStepWeights
from ..ops.mamba_step import MambaStepWeights, mamba_step
from ..ops.quantized import dequantize
from ..ops.segments import Segments
from .base import DecodeStack, SequenceLayer, StackDecoder, register, tag_param


def _add_direction(
    module: nn.Module,
    d_inner: int,
    d_state: int,
    d_conv: int,
    dt_rank: int,
    dt_min: float,
    dt_max: float,
    dt_init: str,
    dt_scale: float,
    dt_init_floor: float,
    conv_bias: bool,
    causal_conv1d_backend: str | None,
    A_init_range: tuple[float, float] | None = None,
) -> None:
    """Give ``module`` one direction's parameters: conv1d, x_proj, dt_proj, A_log, D."""
    module.conv1d = ShortConvolution(d_inner, d_conv, bias=conv_bias, activation="silu",
                                     causal_conv1d_backend=causal_conv1d_backend)
    module.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
    module.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)

    # Δ's projection starts small so the initial Δ is set by the bias alone.
    dt_init_std = dt_rank**-0.5 * dt_scale
    if dt_init == "constant":
        nn.init.constant_(module.dt_proj.weight, dt_init_std)
    else:
        nn.init.uniform_(module.dt_proj.weight, -dt_init_std, dt_init_std)
    # softplus(b_Δ) log-uniform in [dt_min, dt_max] (paper, section 3.6): b = softplus⁻¹(dt)
    # = dt + log(1 - exp(-dt)).
    dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    with torch.no_grad():
        module.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
    tag_param(module.dt_proj.bias)

    # S4D-Real init A_n = -n (n = 1..N), stored as A_log so A = -exp(A_log) stays negative (stable); or -A
    # uniform in A_init_range (a slower decay: a longer memory at init).
    if A_init_range is None:
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
    else:
        low, high = A_init_range
        A = torch.empty(d_inner, d_state).uniform_(low, high)
    module.A_log = tag_param(nn.Parameter(torch.log(A)))
    module.D = tag_param(nn.Parameter(torch.ones(d_inner)))


@register("mamba")
class Mamba(SequenceLayer):
    """Mamba block. Input and output (batch, length, d_model).

    Args:
        d_model: model width.
        d_state: SSM state size N per channel.
        d_conv: width of the causal depthwise convolution (>= 1).
        expand: D_inner = expand · d_model.
        dt_rank: rank of Δ's projection; "auto" is ceil(d_model / 16).
        dt_min, dt_max: softplus(dt bias) is initialised log-uniform in [dt_min, dt_max].
        dt_init: "random" (uniform ±dt_rank^-0.5·dt_scale) or "constant" init of dt_proj.weight.
        dt_scale: scale of that init.
        dt_init_floor: lower clamp of the initial Δ.
        conv_bias: bias in the depthwise convolution.
        bias: biases in in_proj and out_proj.
        A_init_range: None: S4D-Real, A_n = -n (the paper's); (low, high): -A uniform in it (e.g. (0.01, 0.1)
            for a long memory at init, which Pathfinder-like tasks need: benchmarks/lra/memory_at_init.py).
        bidirectional: add a reverse direction (its own conv, x_proj, dt_proj, A_log, D, under ``reverse.``;
            in_proj and out_proj shared) run on the input reversed within each sequence's length (each
            document's span, when packed); the two outputs are summed before out_proj. Not causal, so no
            state or step. Checkpoints that name it ``backward.`` (its name until 0.1.0) load unchanged.
        selective_scan_backend: backend of the selective scan (None: $SSMZOO_BACKEND or "auto";
            "cpu", "chunked", "reference", ...; see ``ssmzoo.ops.selective_scan.dispatch``).
        causal_conv1d_backend: backend of the causal depthwise convolution (None: $SSMZOO_BACKEND or
            "auto"; see ``ssmzoo.ops.causal_conv1d.dispatch``).
        mamba_inner_backend: backend of the conv + scan + gate block (None: $SSMZOO_BACKEND or "auto";
            "cpu" fused on CPU, "unfused" (the two ops above), "reference"; see
            ``ssmzoo.ops.mamba_inner.dispatch``). Naming a scan or conv backend above keeps the
            block unfused. ``step`` uses the fused C++ step where it can, the PyTorch one when this is
            "unfused" or "reference".

    State (causal): a tuple ``(conv_state, ssm_state)``:
        conv_state (batch, D_inner, d_conv - 1): the last d_conv - 1 inputs of the convolution
            (unlike mamba-ssm's (batch, D_inner, d_conv) cache, which also keeps the current input);
        ssm_state (batch, D_inner, d_state): h_t.

    Packed documents (``segments=``): one pass, the fused conv and scan restarting at every document start.
    """

    supported_dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    # A 16 x 1,024 prompt in 4 pieces prefilled 20-25% faster than in one call on a 2-core CPU: its
    # (rows, 2 D_inner) activations were fresh memory every call (150,000 page faults), the pieces' are reused
    # and stay in cache; the peak memory is a quarter.
    prefill_rows = 4096
    segments_fast_path = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | Literal["auto"] = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init: Literal["random", "constant"] = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        bidirectional: bool = False,
        A_init_range: tuple[float, float] | None = None,
        selective_scan_backend: str | None = None,
        causal_conv1d_backend: str | None = None,
        mamba_inner_backend: str | None = None,
    ) -> None:
        super().__init__(d_model, causal=not bidirectional)
        for arg, value in (("d_state", d_state), ("d_conv", d_conv), ("expand", expand)):
            check_int("Mamba", arg, value)
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if not isinstance(dt_rank, int) or isinstance(dt_rank, bool) or dt_rank < 1:
            raise ValueError(f"Mamba: dt_rank must be a positive int or 'auto', got {dt_rank!r}")
        check_float("Mamba", "dt_min", dt_min, above=0.0)
        check_float("Mamba", "dt_max", dt_max, above=0.0)
        if dt_min > dt_max:
            raise ValueError(f"Mamba: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        check_choice("Mamba", "dt_init", dt_init, ("random", "constant"))
        check_float("Mamba", "dt_scale", dt_scale, above=0.0)
        check_float("Mamba", "dt_init_floor", dt_init_floor, above=0.0)
        for arg, value in (("conv_bias", conv_bias), ("bias", bias), ("bidirectional", bidirectional)):
            check_bool("Mamba", arg, value)
        if A_init_range is not None:
            ok = isinstance(A_init_range, (tuple, list)) and len(A_init_range) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in A_init_range)
            if not ok or not 0 < A_init_range[0] <= A_init_range[1]:
                raise ValueError(f"Mamba: A_init_range must be None or (low, high) with 0 < low <= high, "
                                 f"got {A_init_range!r}")
            A_init_range = (float(A_init_range[0]), float(A_init_range[1]))
        scan_op.dispatch.check_name(selective_scan_backend, "Mamba", "selective_scan_backend")
        ShortConvolution.check_backend(causal_conv1d_backend, "Mamba")
        inner_op.dispatch.check_name(mamba_inner_backend, "Mamba", "mamba_inner_backend")
        self.d_state, self.d_conv, self.expand, self.dt_rank = d_state, d_conv, expand, dt_rank
        self.d_inner = expand * d_model
        self.bidirectional = bidirectional
        self.selective_scan_backend, self.causal_conv1d_backend = selective_scan_backend, causal_conv1d_backend
        self.mamba_inner_backend = mamba_inner_backend

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        direction = dict(
            d_inner=self.d_inner, d_state=d_state, d_conv=d_conv, dt_rank=dt_rank, dt_min=dt_min,
            dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale, dt_init_floor=dt_init_floor, conv_bias=conv_bias,
            causal_conv1d_backend=causal_conv1d_backend, A_init_range=A_init_range,
        )
        _add_direction(self, **direction)  # the forward (causal) direction, under mamba-ssm's names
        self.reverse: nn.Module | None = None
        if bidirectional:
            self.reverse = nn.Module()
            _add_direction(self.reverse, **direction)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    # -- the selective SSM of one direction -----------------------------------------------------
    @staticmethod
    def _inner_weights(ssm: nn.Module) -> MambaInnerWeights:
        # weight[:, 0] is the (D, W) view of the (D, 1, W) conv weight (cheaper than einops per token)
        return MambaInnerWeights(ssm.conv1d.weight[:, 0], ssm.conv1d.bias, ssm.x_proj.weight,
                                 ssm.dt_proj.weight, ssm.dt_proj.bias, ssm.A_log, ssm.D)

    def _ssm(
        self, ssm: nn.Module, xz: Tensor, conv_state: Tensor | None, ssm_state: Tensor | None, return_state: bool,
        segments: Segments | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """xz (batch, length, 2·D_inner) -> y (batch, length, D_inner) gated by SiLU(z), and the final
        (conv, ssm) states when ``return_state`` (else None: asking for them would keep the scan off
        fused kernels that cannot return a state, such as mamba-ssm's)."""
        state = (conv_state, ssm_state) if conv_state is not None or ssm_state is not None else None
        y = mamba_inner(xz, self._inner_weights(ssm), initial_state=state, output_final_state=return_state,
                        segments=segments, selective_scan_backend=self.selective_scan_backend,
                        causal_conv1d_backend=self.causal_conv1d_backend, backend=self.mamba_inner_backend)
        if return_state:
            y, (conv_state, ssm_state) = y
            return y, conv_state, ssm_state
        return y, None, None

    # -- contract -----------------------------------------------------------------------------
    def _forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None, lengths: Tensor | None, return_state: bool
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        xz = self.in_proj(x)
        conv_state, ssm_state = state if state is not None else (None, None)
        y, conv_state, ssm_state = self._ssm(self, xz, conv_state, ssm_state, return_state)
        new_state = (conv_state, ssm_state) if return_state else None
        if self.reverse is not None:
            y_rev, _, _ = self._ssm(self.reverse, reverse_padded(xz, lengths), None, None, False)
            y = y + reverse_padded(y_rev, lengths)
        return self.out_proj(y), new_state

    def _forward_segments(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None, segments: Segments, return_state: bool
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Packed documents in one pass: the ``mamba_inner`` op's conv and scan restart at every document start;
        the reverse direction runs on each document reversed within its span. States are per document."""
        xz = self.in_proj(x)
        conv_state, ssm_state = state if state is not None else (None, None)
        y, conv_state, ssm_state = self._ssm(self, xz, conv_state, ssm_state, return_state, segments)
        if self.reverse is not None:
            y_rev, _, _ = self._ssm(self.reverse, reverse_documents(xz, segments), None, None, False, segments)
            y = y + reverse_documents(y_rev, segments)
        return self.out_proj(y), ((conv_state, ssm_state) if return_state else None)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        rename_prefix(state_dict, prefix, "backward", "reverse")  # the reverse direction's name until 0.1.0
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _final_state(self, x: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        # Only x's half of in_proj and no out_proj: about half the layer's matmuls. z = 0 makes the discarded
        # output 0 (the fused kernel always writes one).
        d, batch, length = self.d_inner, x.shape[0], x.shape[1]
        w, b = self.in_proj.weight[:d], self.in_proj.bias
        b = None if b is None else b[:d]
        if torch.is_grad_enabled():  # out= below has no autograd
            xz = torch.cat([F.linear(x, w, b), x.new_zeros(batch, length, d)], -1)
        else:  # x's half written in place: no copy, no concatenation
            xz = x.new_empty(batch, length, 2 * d)
            flat, x2 = xz.view(batch * length, 2 * d), x.reshape(batch * length, self.d_model)
            if b is None:
                torch.mm(x2, w.t(), out=flat[:, :d])
            else:
                torch.addmm(b, x2, w.t(), out=flat[:, :d])
            flat[:, d:].zero_()
        conv_state, ssm_state = state if state is not None else (None, None)
        _, conv_state, ssm_state = self._ssm(self, xz, conv_state, ssm_state, True)
        return conv_state, ssm_state

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype)
        return conv_state, ssm_state

    def step_weights(self) -> MambaStepWeights:
        """The parameters as the ``mamba_step`` op takes them."""
        return MambaStepWeights(self.in_proj.weight, self.in_proj.bias, self._inner_weights(self),
                                self.out_proj.weight, self.out_proj.bias)

    @classmethod
    def lm_step_weights(cls, stack: DecodeStack) -> MambaLMStepWeights | None:
        """The stack's weights as the ``mamba_lm_step`` op takes them, or None unless every block is a plain
        causal Mamba block (no MLP, an ungrouped RMSNorm with the final norm's epsilon)."""
        d_model = stack.embedding.shape[1]
        plain = all(type(b.mixer) is cls and b.mixer.causal and b.mlp is None and b.norm is not None
                    and getattr(b.norm, "group_size", None) == d_model and b.norm.eps == stack.norm_f.eps
                    and not getattr(b.norm, "unit_offset", False) for b in stack.blocks)
        if getattr(stack.norm_f, "unit_offset", False):
            plain = False
        if not plain:
            return None
        return MambaLMStepWeights(stack.embedding, tuple(b.norm.weight for b in stack.blocks),
                                  tuple(b.mixer.step_weights() for b in stack.blocks), stack.norm_f.weight,
                                  dequantize(stack.head, stack.embedding.dtype), stack.norm_f.eps)

    @classmethod
    def stack_decoder(cls, stack: DecodeStack) -> StackDecoder | None:
        """A stack of plain Mamba blocks (``lm_step_weights``) decodes through the ``mamba_lm_step`` op: the whole
        token in one call where its C++ backend serves, with the weights gathered and packed once per generate
        call."""
        weights = cls.lm_step_weights(stack)
        if weights is None:
            return None
        # A layer built to avoid the fused kernels ("unfused" / "reference") steps with the PyTorch formulas.
        pytorch_step = any(b.mixer.mamba_inner_backend in ("unfused", "reference") for b in stack.blocks)
        backend = stack.backend if stack.backend is not None else ("reference" if pytorch_step else None)
        lm_step_op.dispatch.check_name(backend, "LanguageModel", "decode_backend")
        # A quantized model's matrices (``LanguageModel.quantize``): their stored forms fill the C++ panels.
        stored = [linear_matrix(m) for b in stack.blocks for m in (b.mixer.in_proj, b.mixer.x_proj, b.mixer.dt_proj,
                                                                   b.mixer.out_proj)] + [stack.head]
        return lm_step_op.mamba_lm_stepper(weights, backend=backend, stored=stored)

    def _step(self, x_t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One token in O(1): the convolution over the cached window, then one recurrence step (the
        whole layer in one C++ call where it can; ``ssmzoo.ops.mamba_step``)."""
        weights = self.step_weights()
        backend = "reference" if self.mamba_inner_backend in ("unfused", "reference") else None
        return mamba_step(x_t, state, weights, backend=backend)
