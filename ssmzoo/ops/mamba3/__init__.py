"""Mamba-3's SSM (arXiv 2603.15569): ``mamba3(x, dt, A, B, C, trap, angles, ...)`` behind one dispatch.

The exponential-trapezoidal recurrence with a complex (rotary) state, SISO or MIMO; reference.py states
the equations. Backends, in ``auto``'s preference order (``ops/dispatch.py`` explains the choice):
- ``triton``: our Triton kernels for the quadratic intra-chunk step (triton.py), on CUDA;
- ``cpu``: our C++ CPU kernels (csrc/mamba3_cpu.cpp, bound in cpu.py) for the per-chunk steps and the rotated
  rows, built on first use;
- ``chunked``: plain PyTorch, the chunked form (chunked.py);
- ``reference``: the token-by-token recurrence, the oracle (reference.py).
Every backend shares chunked.py's element-wise part and the recurrence between chunks; they differ in the
per-chunk work, where the time goes. mamba-ssm's fused kernels (CUDA, bfloat16 inside) are not a backend
here: they do not install on CPU machines, where this package is tested.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from ..dispatch import HALF_DTYPES, REAL_DTYPES, Capabilities, Dispatcher, Request, autocast_off, grad_needed, register_op
from ..segments import Segments
from . import cpu
from .chunked import mamba3_chunked
from .inputs import Mamba3Inputs, Mamba3State, check_mamba3, fake_mamba3
from .reference import mamba3_reference

ALL_FLOAT = REAL_DTYPES + HALF_DTYPES


def _probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    """MIMO of rank 2 with every option (z, D, biases, initial state), two chunks of 2."""
    g = torch.Generator().manual_seed(0)
    b, l, h, p, r, n, a = 1, 4, 2, 2, 2, 4, 1
    x, z = torch.randn(b, l, h, p, generator=g), torch.randn(b, l, h, p, generator=g)
    dt, A, trap = torch.rand(b, l, h, generator=g) + 0.1, -torch.rand(b, l, h, generator=g) - 0.1, torch.randn(b, l, h,
                                                                                                              generator=g)
    B, C = torch.randn(b, l, r, 1, n, generator=g), torch.randn(b, l, r, 1, n, generator=g)
    angles = torch.randn(b, l, h, a, generator=g)
    bB, bC, D = torch.randn(h, r, n, generator=g), torch.randn(h, r, n, generator=g), torch.randn(h, generator=g)
    mx, mz, mo = (torch.randn(h, r, p, generator=g) for _ in range(3))
    state = (torch.rand(b, h, a, generator=g), torch.randn(b, h, p, n, generator=g), torch.randn(b, h, r, n, generator=g),
             torch.randn(b, h, p, generator=g))
    leaves = [t.to(device).requires_grad_() for t in (x, dt, A, B, C, trap, angles, bB, bC, D, z, mx, mz, mo, *state)]
    init = Mamba3State(*leaves[14:]) if caps.initial_state else None
    inputs = Mamba3Inputs(*leaves[:14], None, 2, init, None)
    return (inputs,), {"output_final_state": caps.final_state}


def _triton(inputs: Mamba3Inputs, output_final_state: bool = False):
    from .triton import mamba3_triton  # needs triton: imported on first use only

    return mamba3_triton(inputs, output_final_state)


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


dispatch = Dispatcher("mamba3", mamba3_reference, _probe_case, fake=fake_mamba3)
PACKED = Capabilities(dtypes=ALL_FLOAT, segments=True)
dispatch.register("triton", _triton, ("cuda",), PACKED, available=_triton_available, opaque=True)
dispatch.register("cpu", cpu.mamba3_cpu, ("cpu",), PACKED, available=cpu.available, opaque=True)
dispatch.register("chunked", mamba3_chunked, ("cpu", "cuda"), PACKED)
dispatch.register("reference", mamba3_reference, ("cpu", "cuda"), PACKED)


@register_op(dispatch)
def mamba3(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    trap: Tensor,
    angles: Tensor,
    *,
    B_bias: Tensor | None = None,
    C_bias: Tensor | None = None,
    D: Tensor | None = None,
    z: Tensor | None = None,
    mimo_x: Tensor | None = None,
    mimo_z: Tensor | None = None,
    mimo_o: Tensor | None = None,
    rotary: str | None = None,
    chunk_size: int = 64,
    initial_state: Mamba3State | None = None,
    output_final_state: bool = False,
    segments: Segments | None = None,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Mamba3State]:
    """Mamba-3's SSM per head (reference.py has the recurrence and the paper's equations):

        h_t = α_t h_{t-1} + β_t Σ_r x_{t-1}^r B̄_{t-1}^{rᵀ} + γ_t Σ_r x_t^r B̄_t^{rᵀ},    y_t^r = h_t C̄_t^r + D x_t^r

    with α = exp(Δ A), λ = sigmoid(trap), β = (1 - λ) Δ α, γ = λ Δ, and B̄, C̄ = B + B_bias, C + C_bias turned by
    the cumulative phase Σ Δ π tanh(angles) (``rotary``: "interleaved" pairs (2i, 2i+1), "halves" pairs
    (i, i + d_state/2); default: mamba-ssm's, interleaved for SISO and halves for MIMO). Then the gate silu(z)
    (MIMO: silu(z ⊙ mimo_z^r) per rank) and, for MIMO, the sum over ranks weighted by mimo_o.

    Shapes: x, z (batch, length, heads, headdim); dt (Δ > 0), A (< 0, per token), trap (batch, length, heads);
    B, C (batch, length, groups, d_state), or MIMO (batch, length, rank, groups, d_state), each group serving
    heads/groups heads; angles (batch, length, heads, n_angles); B_bias, C_bias (heads, d_state) or MIMO (heads,
    rank, d_state); D (heads,); mimo_x, mimo_z, mimo_o (heads, rank, headdim). ``segments``: packed documents
    (the state restarts at each; initial and final states per document). ``initial_state``: a
    :class:`Mamba3State`, one per row (or document). ``chunk_size``: the chunked backends' chunk (results do not
    depend on it beyond rounding).

    Returns y (batch, length, heads, headdim) in x's dtype (MIMO without mimo_o: (batch, length, rank, heads,
    headdim)), or with ``output_final_state`` (y, Mamba3State) in float32 (float64 for float64 x).
    ``backend``: None ($SSMZOO_BACKEND or auto), "auto", or a name in ``dispatch.backends``.
    """
    inputs = Mamba3Inputs(x, dt, A, B, C, trap, angles, B_bias, C_bias, D, z, mimo_x, mimo_z, mimo_o, rotary,
                          chunk_size, initial_state, segments)
    check_mamba3(inputs, output_final_state)
    request = Request(
        x.device, x.dtype, initial_state=initial_state is not None, final_state=output_final_state,
        grad=grad_needed(*(t for t in inputs[:14]), *(initial_state or ())),
        segments=segments is not None and not segments.unpacked,
    )
    fn = dispatch.choose(backend, request).fn
    # Under autocast the inputs arrive in mixed precisions; every backend computes in float32 itself, so autocast is
    # off inside (else it recasts the backends' float32 intermediates on their way into the kernels).
    with autocast_off(x.device):
        return fn(inputs, output_final_state)


__all__ = ["Mamba3Inputs", "Mamba3State", "check_mamba3", "dispatch", "mamba3", "mamba3_chunked",
           "mamba3_reference"]
