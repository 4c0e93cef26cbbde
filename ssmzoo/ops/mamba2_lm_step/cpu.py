"""One token of a whole Mamba-2 language model in one C++ call (``lm_step`` in csrc/mamba2_lm_step_cpu.cpp), the
matrices multiplied from panels packed once per generate call: float32, bfloat16 or int8 with row scales."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

from ..extension import load_cpu_extension
from ..quantized import Int8Matrix, Matrix, dequantize
from .inputs import Mamba2LMStepInputs, Mamba2LMStepWeights, State


def extension() -> ModuleType | None:
    return load_cpu_extension("ssmzoo_mamba2_lm_step_cpu", "mamba2_lm_step_cpu.cpp", headers=("cpu_math.h", "cpu_gemm.h"))


def available() -> bool:
    return extension() is not None


def _matrix(m: Matrix, dtype: torch.dtype) -> list[Tensor]:
    """[ATen's operand, panels, scales] for one matrix. With panels (float32 activations on a SIMD build) the
    operand is a zero-stride view of W's shape (the kernel reads only its sizes; no dequantized copy is kept);
    without, the dequantized matrix."""
    ext, empty = extension(), torch.empty(0)
    values = m.values if isinstance(m, Int8Matrix) else m
    if dtype == torch.float32 and values.dtype in (torch.float32, torch.bfloat16, torch.int8):
        panels = ext.pack(values.detach().contiguous())
        if panels.numel() > 0:
            scales = ext.pack_scales(m.scale.float().contiguous()) if isinstance(m, Int8Matrix) else empty
            return [torch.zeros((), dtype=dtype).expand(*values.shape), panels, scales]
    return [dequantize(m, dtype).detach().contiguous(), empty, empty]


def cpu_stepper(w: Mamba2LMStepWeights) -> Callable[[Tensor, list[State]], tuple[Tensor, list[State]]]:
    """``mamba2_lm_step_cpu`` with the weights packed and the argument lists built once (a snapshot: make a new
    stepper after changing the weights): the step takes (token, state)."""
    dtype = w.embedding.dtype
    empty = w.embedding.new_empty(0)
    opt = lambda t: empty if t is None else t.detach().to(dtype).contiguous()  # noqa: E731
    layers, settings = [], []
    with torch.no_grad():
        for norm, l in zip(w.norm_weights, w.layers):
            layers.append([opt(norm), *_matrix(l.in_proj_weight, dtype), opt(l.in_proj_bias), opt(l.conv_weight),
                           opt(l.conv_bias), opt(l.dt_bias), opt(l.A_log), opt(l.D), opt(l.norm_weight),
                           *_matrix(l.out_proj_weight, dtype), opt(l.out_proj_bias)])
            settings.append([float(l.ngroups), float(l.norm_group_size if l.norm_weight is not None else 0),
                             float(l.norm_before_gate), float(l.norm_eps), float(l.dt_limit[0]), float(l.dt_limit[1])])
        rest = (w.embedding.detach().contiguous(), layers, settings, opt(w.norm_f_weight), _matrix(w.head_weight, dtype),
                float(w.eps))
    lm_step, n = extension().lm_step, len(layers)

    def step(token: Tensor, state: list[State]) -> tuple[Tensor, list[State]]:
        out = lm_step(token, [[s[0].contiguous(), s[1].contiguous()] for s in state], *rest)
        return out[0], [(out[1 + 2 * i], out[2 + 2 * i]) for i in range(n)]

    return step


def mamba2_lm_step_cpu(x: Mamba2LMStepInputs) -> tuple[Tensor, list[State]]:
    """Same formulas as the reference; the states passed in are not modified."""
    return cpu_stepper(x.weights)(x.token, x.state)
