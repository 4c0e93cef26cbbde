"""The C++ CPU backend: csrc/mamba3_cpu.cpp computes chunked.py's steps 1, 2 and 4 (the per-chunk work: the
(T·R, T·R) intra-chunk matrix, the chunk's end state, the entering state's output), forward and backward, per
(chunk, head) with OpenMP and BLAS, and builds the rotated, biased keys and queries of every head in one pass each
way; step 3 and the element-wise rest are chunked.py's. Built on first use, cached."""

from __future__ import annotations

from types import ModuleType

from torch import Tensor
from torch.autograd import Function

from ..extension import load_cpu_extension
from .chunked import Kernels, run_chunked
from .inputs import Mamba3Inputs, Mamba3State


def extension() -> ModuleType | None:
    return load_cpu_extension("ssmzoo_mamba3_cpu", "mamba3_cpu.cpp", headers=("cpu_blas.h", "cpu_math.h"))


def available() -> bool:
    return extension() is not None


class IntraChunkCpp(Function):
    """Steps 1-2, chunked.intra_torch's contract: q, k (K, heads, T·rank, d_state); v (K, heads, T·rank, headdim);
    cs, g, w (K, heads, T) -> (y like v, U (K, heads, headdim, d_state))."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, cs: Tensor, g: Tensor, w: Tensor,
                rank: int) -> tuple[Tensor, Tensor]:
        q, k, v, cs, g, w = (t.contiguous() for t in (q, k, v, cs, g, w))
        ctx.rank = rank
        ctx.save_for_backward(q, k, v, cs, g, w)
        return tuple(extension().intra_forward(q, k, v, cs, g, w, rank))

    @staticmethod
    def backward(ctx, dy: Tensor, dU: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, cs, g, w = ctx.saved_tensors
        return (*extension().intra_backward(q, k, v, cs, g, w, ctx.rank, dy.contiguous(), dU.contiguous()), None)


class StateToOutputCpp(Function):
    """Step 4, chunked.output_torch's contract: y + exp(cs) E q."""

    @staticmethod
    def forward(ctx, y: Tensor, cs: Tensor, q: Tensor, E: Tensor, rank: int) -> Tensor:
        cs, q, E = cs.contiguous(), q.contiguous(), E.contiguous()
        ctx.rank = rank
        ctx.save_for_backward(cs, q, E)
        return extension().state_to_output_forward(y.contiguous(), cs, q, E, rank)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, ...]:
        cs, q, E = ctx.saved_tensors
        dcs, dq, dE = extension().state_to_output_backward(cs, q, E, dy.contiguous(), ctx.rank)
        return dy, dcs, dq, dE, None


class RowsCpp(Function):
    """chunked.keys_torch's contract, one pass each way: t (K, T, rank, groups, d_state); bias (heads, rank,
    d_state) or None; cos, sin (K, T, heads, n_angles) -> (K, heads, T·rank, d_state)."""

    @staticmethod
    def forward(ctx, t: Tensor, bias: Tensor | None, cos: Tensor, sin: Tensor, heads: int, pairs: str) -> Tensor:
        t, cos, sin = t.contiguous(), cos.contiguous(), sin.contiguous()
        bias = bias.contiguous() if bias is not None else None
        halves = pairs == "halves"
        K, T, R, G, N = t.shape
        if heads != cos.shape[2]:
            raise RuntimeError("mamba3_cpu: cos must have one phase per head")
        ctx.halves, ctx.has_bias = halves, bias is not None
        ctx.save_for_backward(t, bias, cos, sin)
        return extension().rows_forward(t, bias, cos, sin, halves)

    @staticmethod
    def backward(ctx, dout: Tensor) -> tuple[Tensor | None, ...]:
        t, bias, cos, sin = ctx.saved_tensors
        dt, dbias, dcos, dsin = extension().rows_backward(dout.contiguous(), t, bias, cos, sin, ctx.halves)
        return dt, (dbias.sum(0) if ctx.has_bias else None), dcos, dsin, None, None


CPP_KERNELS = Kernels(RowsCpp.apply, IntraChunkCpp.apply, StateToOutputCpp.apply)


def mamba3_cpu(inputs: Mamba3Inputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, Mamba3State]:
    """Same contract as :func:`~.reference.mamba3_reference`."""
    return run_chunked(inputs, output_final_state, CPP_KERNELS)
