"""Autograd around our diagonal recurrence kernels (C++: csrc/diagonal_recurrence_cpu.cpp, Triton: triton.py),
which share one calling convention:

    kernels.forward(x, decay, h0, resets, doc, num_states, reverse) -> (h, final)
    kernels.backward(decay, h, h0, resets, doc, dh, dfinal, reverse, want_dh0) -> (dx, ddecay, dh0)

with h0 / dh0 empty when there is no initial state, and ddecay summed over (batch, length) by this module
when the decay is constant (the kernels return per-row partial sums). The forward saves only its output:
the backward reads h_{t-1} from it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .inputs import RecurrenceInputs, num_states, reset_layout


class KernelRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kernels: Any, x: Tensor, decay: Tensor, h0: Tensor | None, resets: Tensor, doc: Tensor,
                states: int, reverse: bool) -> tuple[Tensor, Tensor]:
        x, decay = x.contiguous(), decay.contiguous()
        h0c = h0.contiguous() if h0 is not None else x.new_empty(0)
        h, final = kernels.forward(x, decay, h0c, resets, doc, states, reverse)
        ctx.save_for_backward(decay, h, h0c, resets, doc)
        ctx.kernels, ctx.reverse, ctx.has_h0, ctx.states = kernels, reverse, h0 is not None, states
        return h, final

    @staticmethod
    def backward(ctx, dh: Tensor | None, dfinal: Tensor | None):
        decay, h, h0, resets, doc = ctx.saved_tensors
        dh = dh.contiguous() if dh is not None else torch.zeros_like(h)
        dfinal = dfinal.contiguous() if dfinal is not None else h.new_zeros(ctx.states, h.shape[-1])
        dx, ddecay, dh0 = ctx.kernels.backward(decay, h, h0, resets, doc, dh, dfinal, ctx.reverse, ctx.has_h0)
        if decay.dim() == 1:
            ddecay = ddecay.sum(0)
        return None, dx, ddecay, dh0 if ctx.has_h0 else None, None, None, None, None


def run_kernels(kernels: Any, inputs: RecurrenceInputs, output_final_state: bool) -> Tensor | tuple[Tensor, Tensor]:
    """The recurrence by a kernel pair; same contract as the reference."""
    resets, doc = reset_layout(inputs)
    h, final = KernelRecurrence.apply(kernels, inputs.x, inputs.decay, inputs.initial_state, resets, doc,
                                      num_states(inputs), inputs.reverse)
    return (h, final) if output_final_state else h
