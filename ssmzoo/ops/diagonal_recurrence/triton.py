"""The diagonal recurrence in Triton: one program per (row, block of channels), sequential over the row,
the state in registers; forward and exact backward, in the calling convention of kernel.py (the C++ kernel's).

Complex tensors are read through ``torch.view_as_real`` as interleaved (re, im) pairs and computed in real
arithmetic. Runs on CUDA, and on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests check it). Import
this module only where triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .inputs import RecurrenceInputs
from .kernel import run_kernels

MAX_BLOCK = 64


@triton.jit
def _forward_kernel(x_ptr, lam_ptr, h0_ptr, resets_ptr, doc_ptr, h_ptr, fin_ptr, length, dim,
                    BLOCK: tl.constexpr, COMPLEX: tl.constexpr, PER_STEP: tl.constexpr, HAS_H0: tl.constexpr,
                    REVERSE: tl.constexpr):
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    md = d < dim
    C: tl.constexpr = 2 if COMPLEX else 1
    hr = tl.zeros([BLOCK], dtype=h_ptr.dtype.element_ty)
    hi = tl.zeros([BLOCK], dtype=h_ptr.dtype.element_ty)
    if not PER_STEP:
        lr = tl.load(lam_ptr + d * C, mask=md, other=0.0)
        if COMPLEX:
            li = tl.load(lam_ptr + d * C + 1, mask=md, other=0.0)
    for p in range(length):
        if REVERSE:
            t = length - 1 - p
        else:
            t = p
        row = b * length + t
        reset = tl.load(resets_ptr + row).to(tl.int1)
        k = tl.load(doc_ptr + row)
        if reset:
            if HAS_H0:
                hr = tl.load(h0_ptr + (k * dim + d) * C, mask=md, other=0.0)
                if COMPLEX:
                    hi = tl.load(h0_ptr + (k * dim + d) * C + 1, mask=md, other=0.0)
            else:
                hr = hr * 0.0
                hi = hi * 0.0
        if PER_STEP:
            lr = tl.load(lam_ptr + (row * dim + d) * C, mask=md, other=0.0)
            if COMPLEX:
                li = tl.load(lam_ptr + (row * dim + d) * C + 1, mask=md, other=0.0)
        xr = tl.load(x_ptr + (row * dim + d) * C, mask=md, other=0.0)
        if COMPLEX:
            xi = tl.load(x_ptr + (row * dim + d) * C + 1, mask=md, other=0.0)
            nr = lr * hr - li * hi + xr
            hi = lr * hi + li * hr + xi
            hr = nr
            tl.store(h_ptr + (row * dim + d) * C + 1, hi, mask=md)
        else:
            hr = lr * hr + xr
        tl.store(h_ptr + (row * dim + d) * C, hr, mask=md)
        if p == length - 1:
            last = True
        else:
            if REVERSE:
                last = tl.load(resets_ptr + row - 1).to(tl.int1)
            else:
                last = tl.load(resets_ptr + row + 1).to(tl.int1)
        if last:
            tl.store(fin_ptr + (k * dim + d) * C, hr, mask=md)
            if COMPLEX:
                tl.store(fin_ptr + (k * dim + d) * C + 1, hi, mask=md)


@triton.jit
def _backward_kernel(lam_ptr, h_ptr, h0_ptr, resets_ptr, doc_ptr, dh_ptr, dfin_ptr, dx_ptr, dlam_ptr, dh0_ptr,
                     length, dim, BLOCK: tl.constexpr, COMPLEX: tl.constexpr, PER_STEP: tl.constexpr,
                     HAS_H0: tl.constexpr, REVERSE: tl.constexpr):
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    md = d < dim
    C: tl.constexpr = 2 if COMPLEX else 1
    zero = tl.zeros([BLOCK], dtype=h_ptr.dtype.element_ty)
    cr, ci, ar, ai = zero, zero, zero, zero  # carry conj(lam_next) g_next; constant-decay gradient sums
    if not PER_STEP:
        lr = tl.load(lam_ptr + d * C, mask=md, other=0.0)
        if COMPLEX:
            li = tl.load(lam_ptr + d * C + 1, mask=md, other=0.0)
    for q in range(length):
        p = length - 1 - q  # processing order, walked backwards
        if REVERSE:
            t = length - 1 - p
        else:
            t = p
        row = b * length + t
        reset = tl.load(resets_ptr + row).to(tl.int1)
        k = tl.load(doc_ptr + row)
        if q == 0:
            last = True
        else:
            if REVERSE:
                last = tl.load(resets_ptr + row - 1).to(tl.int1)
            else:
                last = tl.load(resets_ptr + row + 1).to(tl.int1)
        if last:
            cr = tl.load(dfin_ptr + (k * dim + d) * C, mask=md, other=0.0)
            if COMPLEX:
                ci = tl.load(dfin_ptr + (k * dim + d) * C + 1, mask=md, other=0.0)
        if reset:
            if HAS_H0:
                pr = tl.load(h0_ptr + (k * dim + d) * C, mask=md, other=0.0)
                if COMPLEX:
                    pi = tl.load(h0_ptr + (k * dim + d) * C + 1, mask=md, other=0.0)
                else:
                    pi = zero
            else:
                pr = zero
                pi = zero
        else:
            if REVERSE:
                prev = row + 1
            else:
                prev = row - 1
            pr = tl.load(h_ptr + (prev * dim + d) * C, mask=md, other=0.0)
            if COMPLEX:
                pi = tl.load(h_ptr + (prev * dim + d) * C + 1, mask=md, other=0.0)
            else:
                pi = zero
        if PER_STEP:
            lr = tl.load(lam_ptr + (row * dim + d) * C, mask=md, other=0.0)
            if COMPLEX:
                li = tl.load(lam_ptr + (row * dim + d) * C + 1, mask=md, other=0.0)
        gr = tl.load(dh_ptr + (row * dim + d) * C, mask=md, other=0.0) + cr
        tl.store(dx_ptr + (row * dim + d) * C, gr, mask=md)
        if COMPLEX:
            gi = tl.load(dh_ptr + (row * dim + d) * C + 1, mask=md, other=0.0) + ci
            tl.store(dx_ptr + (row * dim + d) * C + 1, gi, mask=md)
            dlr = gr * pr + gi * pi
            dli = gi * pr - gr * pi
            cr = lr * gr + li * gi
            ci = lr * gi - li * gr
        else:
            dlr = gr * pr
            dli = zero
            cr = lr * gr
        if PER_STEP:
            tl.store(dlam_ptr + (row * dim + d) * C, dlr, mask=md)
            if COMPLEX:
                tl.store(dlam_ptr + (row * dim + d) * C + 1, dli, mask=md)
        else:
            ar += dlr
            ai += dli
        if HAS_H0:
            if reset:
                tl.store(dh0_ptr + (k * dim + d) * C, cr, mask=md)
                if COMPLEX:
                    tl.store(dh0_ptr + (k * dim + d) * C + 1, ci, mask=md)
    if not PER_STEP:
        tl.store(dlam_ptr + (b * dim + d) * C, ar, mask=md)
        if COMPLEX:
            tl.store(dlam_ptr + (b * dim + d) * C + 1, ai, mask=md)


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _consts(x: Tensor, decay: Tensor, has_h0: bool, reverse: bool) -> tuple[tuple[int, int], dict]:
    block = min(MAX_BLOCK, triton.next_power_of_2(x.shape[2]))
    grid = (x.shape[0], triton.cdiv(x.shape[2], block))
    return grid, {"BLOCK": block, "COMPLEX": x.is_complex(), "PER_STEP": decay.dim() == 3, "HAS_H0": has_h0,
                  "REVERSE": reverse}


class TritonKernels:
    """The calling convention of kernel.py, on Triton kernels."""

    @staticmethod
    def forward(x, decay, h0, resets, doc, states, reverse):
        batch, length, dim = x.shape
        h = torch.empty_like(x)
        final = x.new_zeros(states, dim)
        grid, consts = _consts(x, decay, h0.numel() > 0, reverse)
        h0p = _real(h0) if h0.numel() > 0 else _real(h)
        _forward_kernel[grid](_real(x), _real(decay), h0p, resets, doc, _real(h), _real(final), length, dim, **consts)
        return h, final

    @staticmethod
    def backward(decay, h, h0, resets, doc, dh, dfinal, reverse, want_dh0):
        batch, length, dim = h.shape
        dx = torch.empty_like(h)
        ddecay = torch.empty_like(h) if decay.dim() == 3 else h.new_empty(batch, dim)
        dh0 = h.new_zeros(dfinal.shape[0], dim) if want_dh0 else h.new_empty(0)
        grid, consts = _consts(h, decay, want_dh0, reverse)
        h0p = _real(h0) if want_dh0 else _real(h)
        dh0p = _real(dh0) if want_dh0 else _real(dx)
        _backward_kernel[grid](_real(decay), _real(h), h0p, resets, doc, _real(dh), _real(dfinal), _real(dx),
                               _real(ddecay), dh0p, length, dim, **consts)
        return dx, ddecay, dh0


def diagonal_recurrence_triton(inputs: RecurrenceInputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`diagonal_recurrence_reference`; needs triton (CUDA, or CPU with TRITON_INTERPRET=1)."""
    return run_kernels(TritonKernels, inputs, output_final_state)
