"""The Vandermonde kernel of diagonal SSMs (S4D, Gu et al., arXiv:2206.11893): K[..., l] = 2 Re sum_n v_n z_n^l.

``v`` (..., N) complex are the folded coefficients C_n * B̄_n and ``log_z`` (..., N) complex is
log Ā_n (Δ·A_n for ZOH), so z_n^l = exp(l log_z_n). The factor 2 Re accounts for the conjugate
pairs that are not stored. :func:`vandermonde_transpose` is the transposed product, the state a
diagonal SSM holds after reading a sequence.

Backends of both, in ``auto``'s preference order (``ops/dispatch.py`` explains the choice):
- ``blocks`` (blocks.py): powers in blocks, z^(c·k + j) = z^(c·k) z^j, so N·(c + L/c) exponentials
  instead of N·L and the sum over n is one real batched matmul; O(N √L) memory per row;
- ``reference`` (reference.py): materialises (..., N, L); ``auto`` uses it while that is at most
  ``MATERIALISE_LIMIT`` entries;
- ``chunked`` (chunked.py): walks L in chunks in forward *and* backward, O(N · chunk) memory per row.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..dispatch import COMPLEX_DTYPES, HALF_DTYPES, Capabilities, Dispatcher, Request, autocast_off, grad_needed, register_op
from .blocks import vandermonde_blocks, vandermonde_transpose_blocks
from .chunked import vandermonde_chunked, vandermonde_transpose_chunked
from .inputs import TransposeInputs, VandermondeInputs, check_vandermonde, check_vandermonde_transpose
from .reference import vandermonde_reference, vandermonde_transpose_reference

# Above this many complex entries in (..., N, L), auto switches to the chunked backend.
MATERIALISE_LIMIT = 2**24


def _probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2, 3, dtype=torch.complex64, generator=g).to(device).requires_grad_()
    log_z = (torch.randn(2, 3, dtype=torch.complex64, generator=g) * 0.3 - 0.2).to(device).requires_grad_()
    return (VandermondeInputs(v, log_z, 7),), {}


def _transpose_probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 7, generator=g).to(device).requires_grad_()
    log_z = (torch.randn(2, 3, dtype=torch.complex64, generator=g) * 0.3 - 0.2).to(device).requires_grad_()
    return (TransposeInputs(u, log_z),), {}


_STATELESS = dict(initial_state=False, final_state=False, dtypes=COMPLEX_DTYPES)
dispatch = Dispatcher("vandermonde", vandermonde_reference, _probe_case)
dispatch.register("blocks", vandermonde_blocks, ("cpu", "cuda"), Capabilities(**_STATELESS))
dispatch.register("reference", vandermonde_reference, ("cpu", "cuda"),
                  Capabilities(**_STATELESS, max_size=MATERIALISE_LIMIT))
dispatch.register("chunked", vandermonde_chunked, ("cpu", "cuda"), Capabilities(**_STATELESS))

transpose_dispatch = Dispatcher("vandermonde_transpose", vandermonde_transpose_reference, _transpose_probe_case)
transpose_dispatch.register("blocks", vandermonde_transpose_blocks, ("cpu", "cuda"), Capabilities(**_STATELESS))
transpose_dispatch.register("reference", vandermonde_transpose_reference, ("cpu", "cuda"),
                            Capabilities(**_STATELESS, max_size=MATERIALISE_LIMIT))
transpose_dispatch.register("chunked", vandermonde_transpose_chunked, ("cpu", "cuda"), Capabilities(**_STATELESS))


@register_op(dispatch)
def vandermonde(v: Tensor, log_z: Tensor, length: int, *, backend: str | None = None) -> Tensor:
    """K (..., L) = 2 Re sum_n v_n z_n^l with z = exp(log_z); v and log_z (..., N) complex, broadcastable.

    ``backend``: None ($SSMZOO_BACKEND or auto), "auto", or a name in ``dispatch.backends``."""
    inputs = VandermondeInputs(v, log_z, length)
    shape = check_vandermonde(inputs)
    request = Request(v.device, v.dtype, grad=grad_needed(v, log_z), size=shape.numel() * length)
    with autocast_off(v.device):  # complex arithmetic, which autocast would send to half precision
        return dispatch.choose(backend, request).fn(inputs)


@register_op(transpose_dispatch)
def vandermonde_transpose(u: Tensor, log_z: Tensor, *, backend: str | None = None) -> Tensor:
    """s[..., n] = sum_l u[..., l] z_n^(L-1-l): the state a diagonal SSM holds after reading u.

    u (..., L) real or complex; log_z (..., N) complex; u's leading dims broadcast against log_z's."""
    inputs = TransposeInputs(u, log_z)
    lead = check_vandermonde_transpose(inputs)
    request = Request(u.device, log_z.dtype, grad=grad_needed(u, log_z),
                      size=lead.numel() * log_z.shape[-1] * u.shape[-1])
    if u.dtype in HALF_DTYPES:  # an activation under autocast: the sum is taken in log_z's precision
        u = u.to(log_z.real.dtype)
        inputs = inputs._replace(u=u)
    with autocast_off(u.device):
        return transpose_dispatch.choose(backend, request).fn(inputs)


__all__ = [
    "MATERIALISE_LIMIT", "TransposeInputs", "VandermondeInputs", "check_vandermonde", "check_vandermonde_transpose",
    "dispatch", "transpose_dispatch", "vandermonde", "vandermonde_blocks", "vandermonde_chunked",
    "vandermonde_reference", "vandermonde_transpose", "vandermonde_transpose_blocks", "vandermonde_transpose_chunked",
    "vandermonde_transpose_reference",
]
