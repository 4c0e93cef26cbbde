"""One token of a whole Mamba language model in one C++ call (``lm_step`` in csrc/mamba_cpu.cpp)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..mamba_inner import State
from ..mamba_inner.cpu import extension
from ..quantized import Int8Matrix, Matrix
from .inputs import MambaLMStepInputs, MambaLMStepWeights


def pack_weights(w: MambaLMStepWeights, stored: Sequence[Matrix] | None = None) -> MambaLMStepWeights:
    """``w`` with ``packed`` filled in for the C++ backend (float32 on CPU, where the extension builds and
    has a SIMD kernel for this CPU); otherwise ``w`` unchanged. Costs one copy of the matrices: do it once
    per sequence of steps (generate does it once per call). ``stored``: the matrices' stored forms in the order
    of ``packed`` (per layer in_proj, x_proj, dt_proj, out_proj, then the head; ``ssmzoo.ops.quantized``), whose
    values must be the matrices of ``w``: the panels then hold those (bfloat16, or int8 with row scales)."""
    ext = extension()
    if ext is None or w.embedding.device.type != "cpu" or w.embedding.dtype != torch.float32:
        return w
    mats = [m for layer in w.layers for m in (layer.in_proj_weight, layer.inner.x_proj_weight,
                                                layer.inner.dt_proj_weight, layer.out_proj_weight)]
    mats.append(w.lm_head_weight)
    if any(m.dtype != torch.float32 or m.device.type != "cpu" or m.dim() != 2 for m in mats):
        return w
    if stored is None:
        stored = mats
    elif len(stored) != len(mats) or any(tuple(s.shape) != tuple(m.shape) for s, m in zip(stored, mats)):
        raise ValueError(f"pack_weights: stored must hold {len(mats)} matrices of the weights' shapes")
    empty = w.embedding.new_empty(0)
    with torch.no_grad():
        packed = tuple(ext.pack_panels((s.values if isinstance(s, Int8Matrix) else s).detach()) for s in stored)
        scales = tuple(_padded(s.scale, p.shape[0] * p.shape[2]) if isinstance(s, Int8Matrix) else empty
                       for s, p in zip(stored, packed))
    if any(p.numel() == 0 for p in packed):
        return w
    return w._replace(packed=packed, scales=scales if any(isinstance(s, Int8Matrix) for s in stored) else None)


def _padded(scale: Tensor, size: int) -> Tensor:
    out = scale.new_zeros(size, dtype=torch.float32)
    out[:scale.shape[0]] = scale
    return out


def cpu_stepper(w: MambaLMStepWeights) -> Callable[[Tensor, list[State]], tuple[Tensor, list[State]]]:
    """``mamba_lm_step_cpu`` with the weights' argument lists built once: the step takes (token, state)."""
    empty = w.embedding.new_empty(0)
    opt = lambda t: empty if t is None else t.contiguous()  # noqa: E731
    layers = [[opt(norm), opt(l.in_proj_weight), opt(l.in_proj_bias), opt(l.inner.conv_weight), opt(l.inner.conv_bias),
               opt(l.inner.x_proj_weight), opt(l.inner.dt_proj_weight), opt(l.inner.dt_proj_bias), opt(l.inner.A_log),
               opt(l.inner.D), opt(l.out_proj_weight), opt(l.out_proj_bias)]
              for norm, l in zip(w.norm_weights, w.layers)]
    rest = (w.embedding.contiguous(), layers, w.norm_f_weight.contiguous(), w.lm_head_weight.contiguous(), float(w.eps),
            list(w.packed) if w.packed is not None else [], list(w.scales) if w.scales is not None else [])
    lm_step, n = extension().lm_step, len(layers)

    def step(token: Tensor, state: list[State]) -> tuple[Tensor, list[State]]:
        out = lm_step(token, [[s[0].contiguous(), s[1].contiguous()] for s in state], *rest)
        return out[0], [(out[1 + 2 * i], out[2 + 2 * i]) for i in range(n)]

    return step


def mamba_lm_step_cpu(x: MambaLMStepInputs) -> tuple[Tensor, list[State]]:
    """Same formulas as the reference; the states passed in are not modified."""
    return cpu_stepper(x.weights)(x.token, x.state)
