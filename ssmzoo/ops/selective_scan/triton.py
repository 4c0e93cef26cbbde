"""The selective scan in Triton: one program per (batch element, block of channels), sequential over L,
the (BLOCK_D, N) state in registers; forward and backward.

Same algorithm and calling convention as the compiled kernels (kernel.py): the forward saves the
state before every chunk; the backward walks the chunks in reverse, recomputes a chunk's states into
a scratch buffer and runs the adjoint recurrence dh_{t-1} = exp(Δ_t A) ⊙ (dh_t + dy_t C_t).
Runs on CUDA, and on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests check it). Import this
module only where triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .autograd import CHUNK, run_kernel
from .inputs import ScanInputs

MAX_BLOCK_D = 16


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def _forward_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                    y_ptr, hT_ptr, ckpt_ptr,
                    dim, length, state, groups, channels_per_group, nchunks,
                    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                    TIME_VARYING: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr):
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    md = d < dim
    m2 = md[:, None] & (n < state)[None, :]
    bd = b * dim + d
    row = bd * length
    A = tl.load(A_ptr + d[:, None] * state + n[None, :], mask=m2, other=0.0)
    if TIME_VARYING:
        bc = (b * groups + d // channels_per_group) * length * state
        ts = state
    else:
        bc = d * state
        ts = 0
    Dv = tl.load(D_ptr + d, mask=md, other=0.0)
    bias = tl.load(bias_ptr + d, mask=md, other=0.0)
    h = tl.load(h0_ptr + bd[:, None] * state + n[None, :], mask=m2, other=0.0)
    for t in range(length):
        if t % CHUNK == 0:
            tl.store(ckpt_ptr + (bd * nchunks + t // CHUNK)[:, None] * state + n[None, :], h, mask=m2)
        ut = tl.load(u_ptr + row + t, mask=md, other=0.0)
        dt = tl.load(delta_ptr + row + t, mask=md, other=0.0) + bias
        if SOFTPLUS:
            dt = _softplus(dt)
        Bt = tl.load(B_ptr + (bc + t * ts)[:, None] + n[None, :], mask=m2, other=0.0)
        Ct = tl.load(C_ptr + (bc + t * ts)[:, None] + n[None, :], mask=m2, other=0.0)
        h = tl.exp(dt[:, None] * A) * h + (dt * ut)[:, None] * Bt
        y = tl.sum(h * Ct, axis=1) + Dv * ut
        if HAS_Z:
            zt = tl.load(z_ptr + row + t, mask=md, other=0.0)
            y = y * zt * tl.sigmoid(zt)
        tl.store(y_ptr + row + t, y, mask=md)
    tl.store(hT_ptr + bd[:, None] * state + n[None, :], h, mask=m2)


@triton.jit
def _backward_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dy_ptr, dhT_ptr,
                     ws_ptr, du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
                     dim, length, state, groups, channels_per_group, nchunks,
                     CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                     TIME_VARYING: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr):
    b = tl.program_id(0)
    d0 = tl.program_id(1) * BLOCK_D
    d = d0 + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    md = d < dim
    mn = n < state
    m2 = md[:, None] & mn[None, :]
    bd = b * dim + d
    row = bd * length
    A = tl.load(A_ptr + d[:, None] * state + n[None, :], mask=m2, other=0.0)
    if TIME_VARYING:
        # The wrapper makes BLOCK_D divide the channels per group: the whole block reads one group.
        bc = (b * groups + d // channels_per_group) * length * state
        bc_block = (b * groups + d0 // channels_per_group) * length * state
        ts = state
    else:
        bc = d * state
        bc_block = 0
        ts = 0
    Dv = tl.load(D_ptr + d, mask=md, other=0.0)
    bias = tl.load(bias_ptr + d, mask=md, other=0.0)
    dh = tl.load(dhT_ptr + bd[:, None] * state + n[None, :], mask=m2, other=0.0)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=dh.dtype)
    dB_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=dh.dtype)
    dC_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=dh.dtype)
    dD_acc = tl.zeros([BLOCK_D], dtype=dh.dtype)
    dbias_acc = tl.zeros([BLOCK_D], dtype=dh.dtype)
    ws = ws_ptr + (bd * CHUNK)[:, None] * state + n[None, :]
    for ci in range(nchunks):
        c = nchunks - 1 - ci
        t0 = c * CHUNK
        steps = tl.minimum(length - t0, CHUNK)
        ckpt = ckpt_ptr + (bd * nchunks + c)[:, None] * state + n[None, :]
        # Recompute this chunk's states from its checkpoint.
        h = tl.load(ckpt, mask=m2, other=0.0)
        for k in range(steps):
            t = t0 + k
            ut = tl.load(u_ptr + row + t, mask=md, other=0.0)
            dt = tl.load(delta_ptr + row + t, mask=md, other=0.0) + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            Bt = tl.load(B_ptr + (bc + t * ts)[:, None] + n[None, :], mask=m2, other=0.0)
            h = tl.exp(dt[:, None] * A) * h + (dt * ut)[:, None] * Bt
            tl.store(ws + k * state, h, mask=m2)
        tl.debug_barrier()
        for kk in range(steps):
            k = steps - 1 - kk
            t = t0 + k
            h = tl.load(ws + k * state, mask=m2, other=0.0)
            if k > 0:
                hp = tl.load(ws + (k - 1) * state, mask=m2, other=0.0)
            else:
                hp = tl.load(ckpt, mask=m2, other=0.0)
            ut = tl.load(u_ptr + row + t, mask=md, other=0.0)
            raw = tl.load(delta_ptr + row + t, mask=md, other=0.0) + bias
            if SOFTPLUS:
                dt = _softplus(raw)
            else:
                dt = raw
            Bt = tl.load(B_ptr + (bc + t * ts)[:, None] + n[None, :], mask=m2, other=0.0)
            Ct = tl.load(C_ptr + (bc + t * ts)[:, None] + n[None, :], mask=m2, other=0.0)
            gy = tl.load(dy_ptr + row + t, mask=md, other=0.0)
            if HAS_Z:
                zt = tl.load(z_ptr + row + t, mask=md, other=0.0)
                yt = tl.sum(Ct * h, axis=1) + Dv * ut
                sz = tl.sigmoid(zt)
                tl.store(dz_ptr + row + t, gy * yt * sz * (1.0 + zt * (1.0 - sz)), mask=md)
                gy = gy * zt * sz
            dD_acc += gy * ut
            g = dh + gy[:, None] * Ct  # total adjoint of h_t
            a = tl.exp(dt[:, None] * A)
            ah = a * hp
            dCt = gy[:, None] * h
            dBt = g * (dt * ut)[:, None]
            if TIME_VARYING:
                tl.atomic_add(dC_ptr + bc_block + t * state + n, tl.sum(dCt, axis=0), mask=mn)
                tl.atomic_add(dB_ptr + bc_block + t * state + n, tl.sum(dBt, axis=0), mask=mn)
            else:
                dC_acc += dCt
                dB_acc += dBt
            ddt = tl.sum(g * (Bt * ut[:, None] + A * ah), axis=1)
            tl.store(du_ptr + row + t, gy * Dv + tl.sum(g * Bt, axis=1) * dt, mask=md)
            dA_acc += g * dt[:, None] * ah
            dh = a * g
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(raw)  # softplus' = sigmoid
            tl.store(ddelta_ptr + row + t, ddt, mask=md)
            dbias_acc += ddt
        tl.debug_barrier()
    tl.store(dh0_ptr + bd[:, None] * state + n[None, :], dh, mask=m2)
    tl.atomic_add(dA_ptr + d[:, None] * state + n[None, :], dA_acc, mask=m2)
    if not TIME_VARYING:
        tl.atomic_add(dB_ptr + d[:, None] * state + n[None, :], dB_acc, mask=m2)
        tl.atomic_add(dC_ptr + d[:, None] * state + n[None, :], dC_acc, mask=m2)
    tl.atomic_add(dD_ptr + d, dD_acc, mask=md)
    tl.atomic_add(dbias_ptr + d, dbias_acc, mask=md)


def _block_d(dim: int, groups: int) -> int:
    """Channels per program: a power of two that, with time-varying B/C, divides the channels per group."""
    per_group = dim // groups if groups > 0 else dim
    block = 1
    while block * 2 <= MAX_BLOCK_D and (groups == 0 or per_group % (block * 2) == 0) and block * 2 <= dim:
        block *= 2
    return block


class TritonKernels:
    """The calling convention of the compiled bindings (see kernel.py), on Triton kernels."""

    @staticmethod
    def _meta(u: Tensor, A: Tensor, groups: int, chunk: int, has_z: bool, softplus: bool) -> dict:
        batch, dim, length = u.shape
        block_d = _block_d(dim, groups)
        return {
            "grid": (batch, triton.cdiv(dim, block_d)),
            "sizes": (dim, length, A.shape[1], max(groups, 1), dim // max(groups, 1), triton.cdiv(length, chunk)),
            "consts": {"CHUNK": chunk, "BLOCK_D": block_d, "BLOCK_N": triton.next_power_of_2(A.shape[1]),
                        "TIME_VARYING": groups > 0, "HAS_Z": has_z, "SOFTPLUS": bool(softplus)},
        }

    @staticmethod
    def forward(u, delta, A, B, C, D, z, bias, h0, softplus, groups, chunk):
        m = TritonKernels._meta(u, A, groups, chunk, z.numel() > 0, softplus)
        nchunks = m["sizes"][-1]
        y = torch.empty_like(u)
        final_state = torch.empty_like(h0)
        checkpoints = u.new_empty(u.shape[0], u.shape[1], nchunks, A.shape[1])
        zp = z if z.numel() > 0 else u
        _forward_kernel[m["grid"]](u, delta, A, B, C, D, zp, bias, h0, y, final_state, checkpoints,
                                   *m["sizes"], **m["consts"])
        return y, final_state, checkpoints

    @staticmethod
    def backward(u, delta, A, B, C, D, z, bias, checkpoints, dy, dh_final, softplus, groups, chunk, slices):
        m = TritonKernels._meta(u, A, groups, chunk, z.numel() > 0, softplus)
        batch, dim, _ = u.shape
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dz = torch.empty_like(z) if z.numel() > 0 else u.new_empty(0)
        dA = torch.zeros_like(A)
        dB, dC = torch.zeros_like(B), torch.zeros_like(C)
        dD, dbias = torch.zeros_like(D), torch.zeros_like(bias)
        dh0 = torch.empty_like(dh_final)
        workspace = u.new_empty(batch, dim, chunk, A.shape[1])
        zp = z if z.numel() > 0 else u
        dzp = dz if z.numel() > 0 else du
        _backward_kernel[m["grid"]](u, delta, A, B, C, D, zp, bias, checkpoints, dy, dh_final, workspace,
                                    du, ddelta, dzp, dA, dB, dC, dD, dbias, dh0, *m["sizes"], **m["consts"])
        # Leading axis of 1: the bindings' "partial gradients", already reduced.
        return du, ddelta, dz, dA[None], dB[None], dC[None], dD[None], dbias[None], dh0


def selective_scan_triton(
    x: ScanInputs, *, output_final_state: bool = False, chunk: int = CHUNK
) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`selective_scan_reference`; needs triton (CUDA, or CPU with TRITON_INTERPRET=1)."""
    return run_kernel(TritonKernels, x, output_final_state, chunk)
