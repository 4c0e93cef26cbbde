"""The selective scan of Mamba: ``selective_scan(u, delta, A, B, C, ...)`` behind one dispatch.

Backends, in ``auto``'s preference order: ``reference`` (the sequential oracle, reference.py).
"""

from __future__ import annotations

from torch import Tensor

from ..dispatch import Backend, Dispatcher
from .checks import check_selective_scan_args
from .reference import selective_scan_reference

dispatch = Dispatcher("selective_scan")
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


__all__ = ["selective_scan", "selective_scan_reference", "dispatch"]
