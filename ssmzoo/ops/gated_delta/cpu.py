"""The C++ CPU backend: csrc/gated_delta_cpu.cpp runs the chunked form (chunked.py's math) per (batch row, value
head) with OpenMP, forward and an exact backward that recomputes each chunk's factors from the inputs and the
saved chunk states. The layout, dtypes and final states are chunked.run_chunked's. Built on first use, cached."""

from __future__ import annotations

from types import ModuleType

from einops import reduce
from torch import Tensor
from torch.autograd import Function

from ..extension import load_cpu_extension
from .chunked import run_chunked
from .inputs import GatedDeltaInputs


def extension() -> ModuleType | None:
    return load_cpu_extension("ssmzoo_gated_delta_cpu", "gated_delta_cpu.cpp", headers=("cpu_blas.h", "cpu_math.h"))


def available() -> bool:
    return extension() is not None


class GatedDeltaCpp(Function):
    """q, k (b, L, heads_k, d_k); v (b, L, heads_v, d_v); g, beta (b, L, heads_v), L = chunks · chunk; init
    (b, chunks, heads_v, d_k, d_v) or None; starts (b, chunks) bool -> o (b, L, heads_v, d_v), the chunk end
    states (b, chunks, heads_v, d_k, d_v)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, init: Tensor | None, starts: Tensor,
                scale: float, chunk: int) -> tuple[Tensor, Tensor]:
        none = q.new_empty(0)
        o, S = extension().forward(q, k, v, g, beta, none if init is None else init, starts, scale, chunk)
        ctx.save_for_backward(q, k, v, g, beta, none if init is None else init, starts, S)
        ctx.scale, ctx.chunk, ctx.has_init = scale, chunk, init is not None
        return o, S

    @staticmethod
    def backward(ctx, do: Tensor, dS: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, g, beta, init, starts, S = ctx.saved_tensors
        dq, dk, dv, dg, dbeta, dinit = extension().backward(q, k, v, g, beta, init, starts, S, do.contiguous(),
                                                             dS.contiguous(), ctx.scale, ctx.chunk)
        # The kernel's dq and dk are per value head: sum the heads that share a key head.
        dq, dk = (reduce(t, "b l (h r) d -> b l h d", "sum", h=q.shape[2]) for t in (dq, dk))
        return dq, dk, dv, dg, dbeta, (dinit if ctx.has_init else None), None, None, None


def chunk_core_cpp(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, init: Tensor | None, starts: Tensor,
                   scale: float) -> tuple[Tensor, Tensor]:
    """chunked.chunk_core_torch's contract (same shapes), in C++."""
    batch, nchunks, T = q.shape[:3]

    def rows(t: Tensor) -> Tensor:
        return t.reshape(batch, nchunks * T, *t.shape[3:]).contiguous()

    o, S = GatedDeltaCpp.apply(rows(q), rows(k), rows(v), rows(g), rows(beta),
                               None if init is None else init.contiguous(), starts.contiguous(), scale, T)
    return o.view(batch, nchunks, T, *o.shape[2:]), S


def gated_delta_cpu(x: GatedDeltaInputs, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`gated_delta_reference`."""
    return run_chunked(chunk_core_cpp, x, output_final_state)


__all__ = ["available", "chunk_core_cpp", "gated_delta_cpu"]
