"""The selective scan of Mamba: ``selective_scan(u, delta, A, B, C, ...)`` behind one dispatch.

Backends, in ``auto``'s preference order (``ops/dispatch.py`` explains the choice):
- ``mamba_ssm``: mamba-ssm's fused CUDA kernel, when installed (mamba_ssm.py); no initial or final
  state and no packed documents, so calls that need one go to the next backend;
- ``cuda``: our CUDA kernel (csrc/selective_scan_cuda.cu, bound in cuda.py), built on first use;
- ``triton``: our Triton kernels (triton.py), on CUDA;
- ``cpu``: our C++ CPU kernel (csrc/selective_scan_cpu.cpp, bound in cpu.py), built on first use;
- ``chunked``: plain PyTorch, closed form within chunks, chunks chained and checkpointed (chunked.py);
- ``reference``: the sequential oracle (reference.py).
The autograd Function around the three compiled kernels is autograd.py. Packed documents
(``segments``): ``cpu``, ``chunked`` and ``reference``; the GPU kernels decline them.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from ..dispatch import (HALF_DTYPES, REAL_DTYPES, Capabilities, Dispatcher, Request, grad_needed, register_op,
                        state_at_most)
from ..segments import Segments
from . import cpu, cuda, mamba_ssm
from .chunked import selective_scan_chunked
from .inputs import ScanInputs, check_selective_scan, fake_selective_scan
from .reference import selective_scan_reference

ALL_FLOAT = REAL_DTYPES + HALF_DTYPES
PACKED = Capabilities(dtypes=ALL_FLOAT, segments=True)


def _probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    u, delta, B, C = (torch.randn(*s, generator=g) for s in ((1, 2, 5), (1, 2, 5), (1, 3, 5), (1, 3, 5)))
    A = -torch.rand(2, 3, generator=g) - 0.5
    D, z = torch.randn(2, generator=g), torch.randn(1, 2, 5, generator=g)
    h0 = torch.randn(1, 2, 3, generator=g)
    leaves = [t.to(device).requires_grad_() for t in (u, delta, A, B, C, D, z, h0)]
    u, delta, A, B, C, D, z, h0 = leaves
    x = ScanInputs(u, delta, A, B, C, D, z, None, True, h0 if caps.initial_state else None)
    return (x,), {"output_final_state": caps.final_state}


def _triton(*args, **kwargs):
    from .triton import selective_scan_triton  # needs triton: imported on first use only

    return selective_scan_triton(*args, **kwargs)


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


dispatch = Dispatcher("selective_scan", selective_scan_reference, _probe_case, fake=fake_selective_scan)
dispatch.register("mamba_ssm", mamba_ssm.selective_scan_mamba_ssm, ("cuda",),
                  Capabilities(initial_state=False, final_state=False, dtypes=ALL_FLOAT), available=mamba_ssm.available, opaque=True)
dispatch.register("cuda", cuda.selective_scan_cuda, ("cuda",), Capabilities(dtypes=ALL_FLOAT),
                  available=cuda.available, accepts=state_at_most(cuda.MAX_STATE), opaque=True)
dispatch.register("triton", _triton, ("cuda",), Capabilities(dtypes=ALL_FLOAT), available=_triton_available,
                  opaque=True)
dispatch.register("cpu", cpu.selective_scan_cpu, ("cpu",), PACKED, available=cpu.available,
                  accepts=state_at_most(cpu.MAX_STATE), opaque=True)
dispatch.register("chunked", selective_scan_chunked, ("cpu", "cuda"), PACKED)
dispatch.register("reference", selective_scan_reference, ("cpu", "cuda"), PACKED)


@register_op(dispatch)
def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    *,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    segments: Segments | None = None,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba's selective scan (mamba-ssm's argument order and shapes).

    u, delta (batch, D, L); A (D, N) real; B, C (D, N), (batch, N, L) or (batch, G, N, L) with G
    dividing D; D (D,); z (batch, D, L) gates the output by silu(z); delta_bias (D,) is added to
    delta before the optional softplus; initial_state (batch, D, N).
    ``segments`` (:class:`~ssmzoo.ops.segments.Segments` of (batch, L)): packed documents, the state
    restarting at every document start; initial and final states are then per document (num_docs, D, N).
    Returns y (batch, D, L), or (y, final_state (batch or num_docs, D, N)) with ``output_final_state``.
    ``backend``: None ($SSMZOO_BACKEND or auto), "auto", or a name in ``dispatch.backends``.
    """
    x = ScanInputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, segments)
    check_selective_scan(x)
    if segments is not None and segments.unpacked:  # one document per row: the plain scan
        x = x._replace(segments=None)
    request = Request(
        u.device, u.dtype, initial_state=initial_state is not None, final_state=output_final_state,
        grad=grad_needed(u, delta, A, B, C, D, z, delta_bias, initial_state), segments=x.segments is not None,
        facts=(("d_state", A.shape[1]),),
    )
    return dispatch.choose(backend, request).fn(x, output_final_state=output_final_state)


__all__ = ["ScanInputs", "check_selective_scan", "dispatch", "selective_scan", "selective_scan_chunked",
           "selective_scan_reference"]
