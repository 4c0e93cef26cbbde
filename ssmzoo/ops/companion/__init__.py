"""The companion SSM kernel of SpaceTime (Zhang et al., arXiv:2303.09489): k_l = cᵀ Aˡ b.

A = S + a e_dᵀ is a companion matrix: S (d, d) has ones on the sub-diagonal and the learned vector
a fills the last column. a, b, c (..., d) real (broadcastable), ℓ the length.

Backends, in ``auto``'s preference order (``ops/dispatch.py`` explains the choice):
- ``fft`` (fft.py): the paper's algorithm, O((d + ℓ) log(d + ℓ)) given c̃ = c − (A^ℓ)ᵀc, which
  costs O(d³ log ℓ) by squaring (SpaceTime learns c̃ directly: :func:`companion_kernel_from_c_tilde`);
- ``krylov`` (krylov.py): the Krylov matrix by repeated squaring, O(d² ℓ) in O(log ℓ) matmuls;
- ``reference`` (reference.py): explicit matrix powers, O(ℓ d²) sequential steps: the oracle.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..dispatch import Capabilities, Dispatcher, Request, grad_needed, register_op
from .fft import c_tilde, companion_kernel_fft, companion_kernel_from_c_tilde
from .inputs import CompanionInputs, check_companion
from .krylov import companion_kernel_krylov, krylov
from .reference import companion_kernel_reference, companion_matrix, shift_matrix
from .state import companion_final_state


def _probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(2, 4, generator=g) * 0.2).to(device).requires_grad_()
    b, c = (torch.randn(2, 4, generator=g).to(device).requires_grad_() for _ in range(2))
    return (CompanionInputs(a, b, c, 9),), {}


_KERNEL = Capabilities(initial_state=False, final_state=False)
dispatch = Dispatcher("companion_kernel", companion_kernel_reference, _probe_case)
dispatch.register("fft", companion_kernel_fft, ("cpu", "cuda"), _KERNEL)
dispatch.register("krylov", companion_kernel_krylov, ("cpu", "cuda"), _KERNEL)
dispatch.register("reference", companion_kernel_reference, ("cpu", "cuda"), _KERNEL)


@register_op(dispatch)
def companion_kernel(a: Tensor, b: Tensor, c: Tensor, length: int, *, backend: str | None = None) -> Tensor:
    """k (..., ℓ) with k_l = cᵀ Aˡ b, A = S + a e_dᵀ; a, b, c (..., d) real, broadcastable.

    ``backend``: None ($SSMZOO_BACKEND or auto), "auto", or a name in ``dispatch.backends``."""
    inputs = CompanionInputs(a, b, c, length)
    check_companion(inputs)
    request = Request(a.device, torch.promote_types(torch.promote_types(a.dtype, b.dtype), c.dtype),
                      grad=grad_needed(a, b, c))
    return dispatch.choose(backend, request).fn(inputs)


__all__ = [
    "CompanionInputs", "c_tilde", "check_companion", "companion_final_state", "companion_kernel", "companion_kernel_fft", "companion_kernel_from_c_tilde",
    "companion_kernel_krylov", "companion_kernel_reference", "companion_matrix", "dispatch", "krylov",
    "shift_matrix",
]
