"""The selective scan of Mamba: ``selective_scan(u, delta, A, B, C, ...)`` behind one dispatch.

Backends, in ``auto``'s preference order:
- ``mamba_ssm``: mamba-ssm's fused CUDA kernel, when installed (mamba_ssm.py);
- ``cuda``: our CUDA kernel (csrc/selective_scan_cuda.cu, bound in cuda.py), built on first use;
- ``triton``: our Triton kernels (triton.py), on CUDA;
- ``cpp``: our C++ CPU kernel (csrc/selective_scan_cpu.cpp, bound in cpu.py), built on first use;
- ``chunked``: plain PyTorch, closed form within chunks, chunks chained and checkpointed (chunked.py);
- ``reference``: the sequential oracle (reference.py).
"""

from __future__ import annotations

import importlib
import importlib.util

import torch
from torch import Tensor

from ..dispatch import Backend, Dispatcher
from .checks import check_selective_scan_args
from .chunked import selective_scan_chunked
from .reference import selective_scan_reference


def _probe(fn):
    """A tiny run compared with the reference: an importable but wrong backend is never chosen."""

    def probe(device: torch.device) -> None:
        g = torch.Generator().manual_seed(0)
        args = [torch.randn(*s, generator=g).to(device) for s in ((1, 2, 5), (1, 2, 5), (2, 3), (1, 3, 5), (1, 3, 5))]
        args[2] = -args[2].abs()
        # Positional, as dispatch calls every backend: (u, delta, A, B, C, D, z, delta_bias, softplus, h0, final).
        want = selective_scan_reference(*args, None, None, None, True, None, False)
        got = fn(*args, None, None, None, True, None, False)
        if not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
            raise RuntimeError("output disagrees with the reference")

    return probe


def _lazy(module: str, name: str):
    """A backend function or availability check that imports its module on first call (optional
    dependencies such as triton and mamba_ssm must never be imported with ssmzoo)."""

    def call(*args):
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)(*args)

    return call


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


dispatch = Dispatcher("selective_scan")
for _name, _module, _fn, _devices, _available in (
    ("mamba_ssm", "mamba_ssm", "selective_scan_mamba_ssm", ("cuda",), _lazy("mamba_ssm", "available")),
    ("cuda", "cuda", "selective_scan_cuda", ("cuda",), _lazy("cuda", "available")),
    ("triton", "triton", "selective_scan_triton", ("cuda",), _triton_available),
    ("cpp", "cpu", "selective_scan_cpu", ("cpu",), _lazy("cpu", "available")),
):
    _backend_fn = _lazy(_module, _fn)
    dispatch.add(Backend(_name, _backend_fn, _devices, available=_available, probe=_probe(_backend_fn)))
dispatch.add(Backend("chunked", selective_scan_chunked, ("cpu", "cuda")))
dispatch.add(Backend("reference", selective_scan_reference, ("cpu", "cuda")))


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
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba's selective scan (mamba-ssm's argument order and shapes).

    u, delta (batch, D, L); A (D, N) real; B, C (D, N), (batch, N, L) or (batch, G, N, L) with G
    dividing D; D (D,); z (batch, D, L) gates the output by silu(z); delta_bias (D,) is added to
    delta before the optional softplus; initial_state (batch, D, N).
    Returns y (batch, D, L), or (y, final_state (batch, D, N)) with ``return_final_state``.
    ``backend``: None (``$SSMZOO_BACKEND`` or auto), "auto", or a name from ``dispatch.backends``.
    """
    check_selective_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state)
    fn = dispatch.select(backend, u.device).fn
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state)


__all__ = ["dispatch", "selective_scan", "selective_scan_chunked", "selective_scan_reference"]
