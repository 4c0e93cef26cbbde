"""Mamba's inner block as ops, fused on CPU: ``mamba_inner`` (a whole sequence) and ``mamba_step``
(one token of the whole layer), each behind its own dispatch with the unfused form as reference.

``mamba_inner`` maps in_proj's output xz (batch, length, 2·D_inner), channels last, to the gated
scan output y (batch, length, D_inner), ready for out_proj:

    x, z = xz.chunk(2, -1);  u = SiLU(causal depthwise conv(x))
    δ, B, C = split(x_proj(u));  Δ = softplus(dt_proj(δ) + b_Δ)   (the scan applies bias and softplus)
    y = selective_scan(u, Δ, A, B, C, D) · SiLU(z)

Backends, in ``auto``'s preference order:
- ``cpp`` (csrc/mamba_cpu.cpp): conv and scan kernels that read and write the channels-last layout
  directly (no transposes, no concatenations; the gradient of xz is written in place, both halves),
  with the projections as matmuls in between; float32/float64 on CPU, d_state <= 256, and only when
  the caller did not ask for particular scan or conv backends;
- ``unfused``: the layer's composition of the ``causal_conv1d`` and ``selective_scan`` ops, each
  dispatched on its own (with the backends the caller names): every device and dtype;
- ``reference``: the same composition on both ops' references.

``mamba_step`` is one token of the whole layer (in_proj … out_proj): ``cpp`` in one C++ call
(no gradient), else ``reference`` (the PyTorch formulas of ``Mamba.step``).
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..causal_conv1d import causal_conv1d
from ..causal_conv1d import dispatch as conv_dispatch
from ..dispatch import ENV_VAR, HALF_DTYPES, REAL_DTYPES, Capabilities, Dispatcher, Request, grad_needed
from ..extension import load_cpu_extension
from .kernel import CHUNK

MAX_STATE = 256  # the C++ kernels' stack arrays for the state


def extension() -> ModuleType | None:
    return load_cpu_extension("ssmzoo_mamba_cpu", "mamba_cpu.cpp", headers=("cpu_math.h",))


def available() -> bool:
    return extension() is not None


class MambaInnerWeights(NamedTuple):
    """One direction's parameters (mamba-ssm's names): conv_weight (D, W), conv_bias (D,) or None,
    x_proj_weight (R + 2N, D), dt_proj_weight (D, R), dt_proj_bias (D,), A_log (D, N), D (D,)."""

    conv_weight: Tensor
    conv_bias: Tensor | None
    x_proj_weight: Tensor
    dt_proj_weight: Tensor
    dt_proj_bias: Tensor
    A_log: Tensor
    D: Tensor


class MambaInnerInputs(NamedTuple):
    """xz (batch, length, 2·D); conv_state (batch, D, W-1) and ssm_state (batch, D, N) or None;
    scan_backend / conv_backend: what the unfused form passes to the two ops."""

    xz: Tensor
    weights: MambaInnerWeights
    conv_state: Tensor | None = None
    ssm_state: Tensor | None = None
    scan_backend: str | None = None
    conv_backend: str | None = None


State = tuple[Tensor, Tensor]


def _final_conv_state(xz: Tensor, conv_state: Tensor | None, width: int) -> Tensor:
    """The last W-1 inputs of the conv, (batch, D, W-1), from [conv_state, x]."""
    batch, _, two_d = xz.shape
    d = two_d // 2
    x = rearrange(xz[..., :d], "b l d -> b d l")
    if width == 1:
        return x.new_zeros(batch, d, 0)
    prev = conv_state if conv_state is not None else x.new_zeros(batch, d, width - 1)
    return torch.cat([prev.to(x.dtype), x[..., -(width - 1):]], -1)[..., -(width - 1):]


def _unfused(x: MambaInnerInputs, output_final_state: bool, scan_backend: str | None,
             conv_backend: str | None) -> Tensor | tuple[Tensor, State]:
    from . import selective_scan  # the package's public op (imported here: it imports this module)

    xz, w = x.xz, x.weights
    n = w.A_log.shape[1]
    rank = w.dt_proj_weight.shape[1]
    u, z = rearrange(xz, "b l d -> b d l").chunk(2, dim=1)
    u = causal_conv1d(u, w.conv_weight, w.conv_bias, "silu", initial_state=x.conv_state,
                      output_final_state=output_final_state, backend=conv_backend)
    if output_final_state:
        u, conv_state = u
    x_dbl = torch.einsum("bdl,ed->ble", u, w.x_proj_weight)
    dt, B, C = torch.split(x_dbl, [rank, n, n], dim=-1)
    delta = torch.einsum("dr,blr->bdl", w.dt_proj_weight, dt)
    y = selective_scan(u, delta, -torch.exp(w.A_log), rearrange(B, "b l n -> b n l"), rearrange(C, "b l n -> b n l"),
                       D=w.D, z=z, delta_bias=w.dt_proj_bias, delta_softplus=True, initial_state=x.ssm_state,
                       output_final_state=output_final_state, backend=scan_backend)
    if not output_final_state:
        return rearrange(y, "b d l -> b l d")
    y, ssm_state = y
    return rearrange(y, "b d l -> b l d"), (conv_state, ssm_state)


def mamba_inner_reference(x: MambaInnerInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, State]:
    """The readable form: the conv and scan references composed."""
    return _unfused(x, output_final_state, "reference", "reference")


def mamba_inner_unfused(x: MambaInnerInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, State]:
    """The conv and scan ops composed, each dispatched on its own (the caller's backends)."""
    return _unfused(x, output_final_state, x.scan_backend, x.conv_backend)


class _FusedInner(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ext, xz, conv_w, conv_b, xproj_w, dt_w, dt_b, A, Dskip, conv_state, h0, chunk):
        empty = xz.new_empty(0)
        rank = dt_w.shape[1]
        u = ext.conv_forward(xz, conv_w, empty if conv_b is None else conv_b, empty if conv_state is None else conv_state)
        x_dbl = F.linear(u, xproj_w)  # (batch, length, R + 2N)
        delta = F.linear(x_dbl[..., :rank], dt_w)  # (batch, length, D), before its bias and softplus
        y, h_final, ckpt = ext.scan_forward(u, delta, dt_b, A, x_dbl, rank, xz, Dskip, empty if h0 is None else h0, chunk)
        ctx.save_for_backward(xz, conv_w, conv_b, xproj_w, dt_w, dt_b, A, Dskip, conv_state, u, x_dbl, delta, ckpt)
        ctx.ext, ctx.chunk = ext, chunk
        return y, h_final

    @staticmethod
    def backward(ctx, dy, dh_final):
        xz, conv_w, conv_b, xproj_w, dt_w, dt_b, A, Dskip, conv_state, u, x_dbl, delta, ckpt = ctx.saved_tensors
        ext, rank = ctx.ext, dt_w.shape[1]
        batch, length, d_inner = u.shape
        empty = xz.new_empty(0)
        dy = dy.contiguous() if dy is not None else torch.zeros_like(u)
        dh_final = dh_final.contiguous() if dh_final is not None else u.new_zeros(batch, d_inner, A.shape[1])
        dxz = torch.empty_like(xz)  # the scan writes the z half, the conv the x half
        du, ddelta, dA, dD, dbias, dB, dC, dh0 = ext.scan_backward(u, delta, dt_b, A, x_dbl, rank, xz, Dskip, ckpt, dy,
                                                                   dh_final, ctx.chunk, dxz)
        flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
        d_dt = torch.matmul(ddelta, dt_w)  # (batch, length, R)
        d_dt_w = flat(ddelta).t() @ flat(x_dbl[..., :rank])
        dx_dbl = torch.cat([d_dt, dB, dC], -1)
        d_xproj_w = flat(dx_dbl).t() @ flat(u)
        flat(du).addmm_(flat(dx_dbl), xproj_w)  # the gradient of u through x_proj joins the scan's
        d_conv_w, d_conv_b, d_state = ext.conv_backward(xz, conv_w, empty if conv_b is None else conv_b,
                                                        empty if conv_state is None else conv_state, du, dxz)
        return (None, dxz, d_conv_w, None if conv_b is None else d_conv_b, d_xproj_w, d_dt_w, dbias, dA, dD,
                None if conv_state is None else d_state.view_as(conv_state), dh0 if ctx.needs_input_grad[10] else None, None)


def mamba_inner_cpp(x: MambaInnerInputs, *, output_final_state: bool = False,
                    chunk: int = CHUNK) -> Tensor | tuple[Tensor, State]:
    """The fused C++ form (csrc/mamba_cpu.cpp); computes in the inputs' dtype (float32 or float64)."""
    w = x.weights
    dtype = x.xz.dtype
    cast = lambda t: None if t is None else t.to(dtype).contiguous()  # noqa: E731
    y, h_final = _FusedInner.apply(extension(), cast(x.xz), cast(w.conv_weight), cast(w.conv_bias),
                                   cast(w.x_proj_weight), cast(w.dt_proj_weight), cast(w.dt_proj_bias),
                                   cast(-torch.exp(w.A_log)), cast(w.D), cast(x.conv_state), cast(x.ssm_state), chunk)
    if not output_final_state:
        return y
    return y, (_final_conv_state(x.xz, x.conv_state, w.conv_weight.shape[1]), h_final)


def _inner_probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    batch, length, d, n, rank, width = 1, 5, 3, 2, 1, 3
    leaf = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(device).requires_grad_()  # noqa: E731
    w = MambaInnerWeights(leaf(d, width), leaf(d), leaf(rank + 2 * n, d), leaf(d, rank), leaf(d), leaf(d, n, scale=0.5),
                          leaf(d))
    states = (leaf(batch, d, width - 1), leaf(batch, d, n)) if caps.initial_state else (None, None)
    return (MambaInnerInputs(leaf(batch, length, 2 * d), w, *states),), {"output_final_state": caps.final_state}


def _cpp_accepts(request: Request) -> str | None:
    if request.fact("d_state", 0) > MAX_STATE:
        return f"it supports d_state <= {MAX_STATE}, got {request.fact('d_state')}"
    asked = [f"{op} backend {name!r}" for op, name in (("selective_scan", request.fact("scan_backend")),
                                                        ("causal_conv1d", request.fact("conv_backend")))
             if name not in (None, "auto")]
    if asked:
        return f"the caller asked for the {' and '.join(asked)} (the unfused form runs them)"
    return None


dispatch = Dispatcher("mamba_inner", mamba_inner_reference, _inner_probe_case)
dispatch.register("cpp", mamba_inner_cpp, ("cpu",), Capabilities(), available=available, accepts=_cpp_accepts)
dispatch.register("unfused", mamba_inner_unfused, ("cpu", "cuda"), Capabilities(dtypes=REAL_DTYPES + HALF_DTYPES))
dispatch.register("reference", mamba_inner_reference, ("cpu", "cuda"), Capabilities(dtypes=REAL_DTYPES + HALF_DTYPES))


def _requested(op_dispatch: Dispatcher, name: str | None) -> str | None:
    """The backend a call of that op would be steered to: the name given, else $SSMZOO_BACKEND when
    that op has such a backend."""
    if name is None:
        env = os.environ.get(ENV_VAR)
        return env if env in op_dispatch.backends else None
    return name


def mamba_inner(
    xz: Tensor,
    weights: MambaInnerWeights,
    *,
    conv_state: Tensor | None = None,
    ssm_state: Tensor | None = None,
    output_final_state: bool = False,
    scan_backend: str | None = None,
    conv_backend: str | None = None,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, State]:
    """y (batch, length, D) gated, from xz (batch, length, 2·D); with ``output_final_state`` also
    (conv_state (batch, D, W-1), ssm_state (batch, D, N)). ``scan_backend``/``conv_backend``: the
    backends the unfused form uses for its two ops (naming one keeps the call off the fused form);
    ``backend``: None ($SSMZOO_BACKEND or auto), "auto", or a name in ``dispatch.backends``."""
    from . import dispatch as scan_dispatch

    d_inner = xz.shape[-1] // 2
    if xz.dim() != 3 or xz.shape[-1] != 2 * d_inner or weights.conv_weight.shape[0] != d_inner:
        raise ValueError(f"mamba_inner: xz must be (batch, length, 2·D) with D = {weights.conv_weight.shape[0]}, "
                         f"got shape {tuple(xz.shape)}")
    request = Request(
        xz.device, xz.dtype, initial_state=conv_state is not None or ssm_state is not None,
        final_state=output_final_state, grad=grad_needed(xz, tuple(weights), conv_state, ssm_state),
        facts=(("d_state", weights.A_log.shape[1]), ("scan_backend", _requested(scan_dispatch, scan_backend)),
               ("conv_backend", _requested(conv_dispatch, conv_backend))),
    )
    inputs = MambaInnerInputs(xz, weights, conv_state, ssm_state, scan_backend, conv_backend)
    return dispatch.choose(backend, request).fn(inputs, output_final_state=output_final_state)


# -- one token of the whole layer ------------------------------------------------------------------
class MambaStepWeights(NamedTuple):
    """The layer's parameters for a step: in_proj, the inner weights, out_proj (biases may be None)."""

    in_proj_weight: Tensor
    in_proj_bias: Tensor | None
    inner: MambaInnerWeights
    out_proj_weight: Tensor
    out_proj_bias: Tensor | None


def mamba_step_reference(x_t: Tensor, state: State, w: MambaStepWeights) -> tuple[Tensor, State]:
    """One token: x_t (batch, d_model), state (conv_state (batch, D, W-1), h (batch, D, N))."""
    conv_state, h = state
    inner = w.inner
    u, z = F.linear(x_t, w.in_proj_weight, w.in_proj_bias).chunk(2, dim=-1)  # (batch, D) each
    window = torch.cat([conv_state.to(u.dtype), u[..., None]], dim=-1)  # (batch, D, W)
    u = F.silu((window * inner.conv_weight).sum(-1) + (inner.conv_bias if inner.conv_bias is not None else 0))
    conv_state = window[..., 1:]
    rank, n = inner.dt_proj_weight.shape[1], inner.A_log.shape[1]
    dt, B, C = torch.split(F.linear(u, inner.x_proj_weight), [rank, n, n], dim=-1)
    delta = F.softplus(F.linear(dt, inner.dt_proj_weight, inner.dt_proj_bias))  # (batch, D)
    A = -torch.exp(inner.A_log)
    # Zero-order hold for A, Euler for B (the paper's simplification, section 3.5 / mamba-ssm).
    h = torch.exp(delta[..., None] * A) * h + (delta * u)[..., None] * B[:, None, :]
    y = (torch.einsum("bdn,bn->bd", h, C) + inner.D * u) * F.silu(z)
    return F.linear(y, w.out_proj_weight, w.out_proj_bias), (conv_state, h)


def mamba_step_cpp(x_t: Tensor, state: State, w: MambaStepWeights) -> tuple[Tensor, State]:
    """One token in one C++ call (csrc/mamba_cpu.cpp), same formulas as the reference."""
    empty = x_t.new_empty(0)
    opt = lambda t: empty if t is None else t  # noqa: E731
    inner = w.inner
    y, conv_state, h = extension().step(
        x_t.contiguous(), state[0].contiguous(), state[1].contiguous(), w.in_proj_weight, opt(w.in_proj_bias),
        inner.conv_weight, opt(inner.conv_bias), inner.x_proj_weight, inner.dt_proj_weight, inner.dt_proj_bias,
        inner.A_log, inner.D, w.out_proj_weight, opt(w.out_proj_bias))
    return y, (conv_state, h)


def _step_probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    batch, d_model, d, n, rank, width = 2, 3, 4, 2, 1, 3
    t = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    inner = MambaInnerWeights(t(d, width), t(d), t(rank + 2 * n, d), t(d, rank), t(d), t(d, n) * 0.5, t(d))
    w = MambaStepWeights(t(2 * d, d_model), t(2 * d), inner, t(d_model, d), None)
    return (t(batch, d_model), (t(batch, d, width - 1), t(batch, d, n)), w), {}


step_dispatch = Dispatcher("mamba_step", mamba_step_reference, _step_probe_case, rtol=1e-4, atol=1e-5)
step_dispatch.register("cpp", mamba_step_cpp, ("cpu",), Capabilities(grad=False), available=available,
                       accepts=_cpp_accepts)
step_dispatch.register("reference", mamba_step_reference, ("cpu", "cuda"),
                       Capabilities(dtypes=REAL_DTYPES + HALF_DTYPES))


def mamba_step(x_t: Tensor, state: State, weights: MambaStepWeights, *,
               backend: str | None = None) -> tuple[Tensor, State]:
    """One token of the Mamba layer: x_t (batch, d_model) -> (out (batch, d_model), next state)."""
    request = Request(x_t.device, x_t.dtype, initial_state=True, final_state=True,
                      grad=grad_needed(x_t, state, tuple(weights[:2]), tuple(weights.inner), tuple(weights[3:])),
                      facts=(("d_state", weights.inner.A_log.shape[1]),))
    return step_dispatch.choose(backend, request).fn(x_t, state, weights)


__all__ = [
    "MambaInnerInputs", "MambaInnerWeights", "MambaStepWeights", "dispatch", "mamba_inner", "mamba_inner_cpp",
    "mamba_inner_reference", "mamba_inner_unfused", "mamba_step", "mamba_step_cpp", "mamba_step_reference",
    "step_dispatch",
]
