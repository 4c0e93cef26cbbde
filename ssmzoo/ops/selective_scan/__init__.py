"""The selective scan of Mamba: ``selective_scan(u, delta, A, B, C, ...)`` behind one dispatch.

Backends, in ``auto``'s preference order:
- ``cpp``: our C++ CPU kernel (csrc/selective_scan_cpu.cpp, bound in cpu.py), built on first use;
- ``chunked``: plain PyTorch, closed form within chunks, chunks chained and checkpointed (chunked.py);
- ``reference``: the sequential oracle (reference.py).
"""

from __future__ import annotations

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


def _cpp(*args):
    from .cpu import selective_scan_cpu

    return selective_scan_cpu(*args)


def _cpp_available() -> bool:
    from .cpu import available

    return available()


dispatch = Dispatcher("selective_scan")
dispatch.add(Backend("cpp", _cpp, ("cpu",), available=_cpp_available, probe=_probe(_cpp)))
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


__all__ = ["selective_scan", "selective_scan_reference", "selective_scan_chunked", "dispatch"]
