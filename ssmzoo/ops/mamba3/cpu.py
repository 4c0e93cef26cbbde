"""The C++ CPU backend: csrc/mamba3_cpu.cpp computes the intra-chunk step (chunked.py's step 1, the
(T·R, T·R) work), forward and backward, per (chunk, head) with OpenMP and BLAS; everything else is
chunked.py's. Built on first use, cached."""

from __future__ import annotations

from types import ModuleType

from torch import Tensor
from torch.autograd import Function

from ..extension import load_cpu_extension
from .chunked import run_chunked
from .inputs import Mamba3Inputs, Mamba3State


def extension() -> ModuleType | None:
    return load_cpu_extension("ssmzoo_mamba3_cpu", "mamba3_cpu.cpp", headers=("cpu_math.h",))


def available() -> bool:
    return extension() is not None


class IntraChunkCpp(Function):
    """chunked.intra_torch's contract: q, k (K, heads, T·rank, d_state); v (K, heads, T·rank, headdim); cs, g, w
    (K, heads, T) -> y like v."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, cs: Tensor, g: Tensor, w: Tensor, rank: int) -> Tensor:
        q, k, v, cs, g, w = (t.contiguous() for t in (q, k, v, cs, g, w))
        ctx.rank = rank
        ctx.save_for_backward(q, k, v, cs, g, w)
        return extension().intra_forward(q, k, v, cs, g, w, rank)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, cs, g, w = ctx.saved_tensors
        return (*extension().intra_backward(q, k, v, cs, g, w, ctx.rank, dy.contiguous()), None)


def intra_cpp(q: Tensor, k: Tensor, v: Tensor, cs: Tensor, g: Tensor, w: Tensor, rank: int) -> Tensor:
    return IntraChunkCpp.apply(q, k, v, cs, g, w, rank)


def mamba3_cpu(inputs: Mamba3Inputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, Mamba3State]:
    """Same contract as :func:`~.reference.mamba3_reference`."""
    return run_chunked(inputs, output_final_state, intra_cpp)
