"""The Cauchy kernel of S4 (Gu, Goel & Ré, arXiv:2111.00396): out[..., l] = Σ_n v_n / (z_l - w_n) + conj(v_n) / (z_l - conj(w_n)).

S4 stores one state entry of each conjugate pair, so the sum over all N entries is the sum over the
stored N/2 plus their conjugates (z is not real, so this is *not* 2 Re of the half sum).
v, w (..., N/2) complex (broadcastable), z (L,) complex; z is a constant (no gradient flows to it).

Backends, in ``auto``'s preference order (``ops/dispatch.py`` explains the choice):
- ``reference`` (reference.py): materialises (..., N/2, L); ``auto`` uses it while that is at most
  ``MATERIALISE_LIMIT`` entries (fast and simple for small kernels).
- ``cpu`` (cpu.py): csrc/cauchy.cpp, OpenMP forward and backward kernels in vectorised real arithmetic, no
  intermediate (CPU). 2.6-4.5x faster than keops on this CPU for the S4 kernel at L 1K-16K
  (benchmarks/speed/results/s4_kernel.md), so on a CPU ``auto`` takes it before keops.
- ``keops`` (keops.py): pykeops reductions (CPU or GPU; the ``[keops]`` extra), O(N + L) memory; ``auto``'s
  choice on a GPU (its formulas compile once per machine, about 6 s each).
- ``chunked`` (chunked.py): PyTorch, walks L in chunks in forward *and* backward: O(N · chunk) memory.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from ..dispatch import COMPLEX_DTYPES, Capabilities, Dispatcher, Request, grad_needed, register_op
from . import cpu, keops
from .chunked import cauchy_chunked
from .inputs import CauchyInputs, check_cauchy, fake_cauchy
from .reference import cauchy_reference

# Up to this many complex entries in (..., N, L), auto uses the reference.
MATERIALISE_LIMIT = 2**20


def _probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2, 3, dtype=torch.complex64, generator=g).to(device).requires_grad_()
    w = (torch.randn(2, 3, dtype=torch.complex64, generator=g) - 1).to(device).requires_grad_()
    z = torch.randn(5, dtype=torch.complex64, generator=g).to(device)
    return (CauchyInputs(v, z, w),), {}


STATELESS = Capabilities(initial_state=False, final_state=False, dtypes=COMPLEX_DTYPES)
dispatch = Dispatcher("cauchy", cauchy_reference, _probe_case, fake=fake_cauchy, rtol=1e-3, atol=1e-3)
dispatch.register("reference", cauchy_reference, ("cpu", "cuda"),
                  Capabilities(initial_state=False, final_state=False, dtypes=COMPLEX_DTYPES,
                               max_size=MATERIALISE_LIMIT))
dispatch.register("cpu", cpu.cauchy_cpu, ("cpu",), STATELESS, available=cpu.available, opaque=True)
dispatch.register("keops", keops.cauchy_keops, ("cpu", "cuda"), STATELESS, available=keops.available, opaque=True)
dispatch.register("chunked", cauchy_chunked, ("cpu", "cuda"), STATELESS)


@register_op(dispatch)
def cauchy(v: Tensor, z: Tensor, w: Tensor, *, backend: str | None = None) -> Tensor:
    """out (..., L) = Σ_n v_n / (z_l - w_n) + conj(v_n) / (z_l - conj(w_n)).

    v, w (..., N) complex, broadcastable; z (L,) complex, same dtype, no gradient.
    ``backend``: None ($SSMZOO_BACKEND or auto), "auto", or a name in ``dispatch.backends``."""
    shape = check_cauchy(CauchyInputs(v, z, w))
    request = Request(v.device, v.dtype, grad=grad_needed(v, w), size=shape.numel() * z.shape[0])
    fn = dispatch.choose(backend, request).fn
    v2 = rearrange(v.expand(shape), "... n -> (...) n")
    w2 = rearrange(w.expand(shape), "... n -> (...) n")
    return fn(CauchyInputs(v2, z, w2)).reshape(*shape[:-1], z.shape[0])


__all__ = ["MATERIALISE_LIMIT", "CauchyInputs", "cauchy", "cauchy_chunked", "cauchy_reference", "check_cauchy",
           "dispatch"]
