"""The C++ CPU backend: csrc/ssd_cpu.cpp computes steps 1-2 (the (T, T) work) and step 4 of the chunked
algorithm, forward and backward, fused per (chunk, group) with OpenMP, in the chunk layout itself;
step 3 (small) and everything around the chunks are chunked.py's. Built on first use, cached."""

from __future__ import annotations

from types import ModuleType

from torch import Tensor
from torch.autograd import Function

from ..extension import load_cpu_extension
from ..chunks import pass_states
from .chunked import run_chunked
from .inputs import SSDInputs


def extension() -> ModuleType | None:
    return load_cpu_extension("ssmzoo_ssd_cpu", "ssd_cpu.cpp", headers=("cpu_blas.h", "cpu_math.h"))


def available() -> bool:
    return extension() is not None


class IntraChunkCpp(Function):
    """Steps 1-2 (chunked.IntraChunk's math) on K chunks: x (K, T, h, p); delta, cs (K, T, h);
    B, C (K, T, g, n) -> y (K, T, h, p), U (K, h, p, n)."""

    @staticmethod
    def forward(ctx, x: Tensor, delta: Tensor, cs: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
        y, U = extension().intra_chunk_forward(x, delta, cs, B, C)
        ctx.save_for_backward(x, delta, cs, B, C, y)
        return y, U

    @staticmethod
    def backward(ctx, dy: Tensor, dU: Tensor) -> tuple[Tensor, ...]:
        x, delta, cs, B, C, y = ctx.saved_tensors
        return tuple(extension().intra_chunk_backward(x, delta, cs, B, C, y, dy.contiguous(), dU.contiguous()))


class StateToOutputCpp(Function):
    """Step 4: y + exp(cs_i) E C_i, with y (K, T, h, p), cs (K, T, h), C (K, T, g, n), E (K, h, p, n)."""

    @staticmethod
    def forward(ctx, y: Tensor, cs: Tensor, C: Tensor, E: Tensor) -> Tensor:
        ctx.save_for_backward(cs, C, E)
        return extension().state_to_output_forward(y, cs, C, E)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, ...]:
        cs, C, E = ctx.saved_tensors
        dcs, dC, dE = extension().state_to_output_backward(cs, C, E, dy.contiguous())
        return dy, dcs, dC, dE


def chunk_scan_cpu(x: Tensor, delta: Tensor, cs: Tensor, B: Tensor, C: Tensor, init: Tensor | None,
                   starts: Tensor) -> tuple[Tensor, Tensor]:
    """chunked.chunk_scan_torch's contract (same shapes), steps 1-2 and 4 in C++."""
    batch, nchunks, T, heads, headdim = x.shape
    K = batch * nchunks

    def rows(t: Tensor) -> Tensor:
        return t.reshape(K, *t.shape[2:]).contiguous()

    cs_k, C_k = rows(cs), rows(C)
    y, U = IntraChunkCpp.apply(rows(x), rows(delta), cs_k, rows(B), C_k)
    S, E = pass_states(U.view(batch, nchunks, *U.shape[1:]), cs[:, :, -1], init, starts)
    y = StateToOutputCpp.apply(y, cs_k, C_k, rows(E))
    return y.view(batch, nchunks, T, heads, headdim), S


def ssd_cpu(inputs: SSDInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`ssd_reference`."""
    return run_chunked(chunk_scan_cpu, inputs, output_final_state)
