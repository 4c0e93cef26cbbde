"""The Vandermonde kernel of diagonal SSMs (S4D, PAPERS.md): K[..., l] = 2 Re sum_n v_n z_n^l.

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

from ..dispatch import COMPLEX_DTYPES, HALF_DTYPES, Capabilities, Dispatcher, Request, autocast_off, grad_needed
from .blocks import vandermonde_blocks, vandermonde_transpose_blocks
from .chunked import vandermonde_chunked, vandermonde_transpose_chunked
from .reference import vandermonde_reference, vandermonde_transpose_reference

# Above this many complex entries in (..., N, L), auto switches to the chunked backend.
MATERIALISE_LIMIT = 2**24


def _probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2, 3, dtype=torch.complex64, generator=g).to(device).requires_grad_()
    log_z = (torch.randn(2, 3, dtype=torch.complex64, generator=g) * 0.3 - 0.2).to(device).requires_grad_()
    return (v, log_z, 7), {}


def _transpose_probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 7, generator=g).to(device).requires_grad_()
    log_z = (torch.randn(2, 3, dtype=torch.complex64, generator=g) * 0.3 - 0.2).to(device).requires_grad_()
    return (u, log_z), {}


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


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_log_z(fn: str, log_z: Tensor) -> None:
    if not isinstance(log_z, Tensor) or not log_z.is_complex() or log_z.dim() < 1 or log_z.shape[-1] < 1:
        raise ValueError(f"{fn}: log_z must be a complex tensor (..., N) with N >= 1, got "
                         f"{getattr(log_z, 'dtype', type(log_z).__name__)} {getattr(log_z, 'shape', '')}")


def vandermonde(v: Tensor, log_z: Tensor, length: int, *, backend: str | None = None) -> Tensor:
    """K (..., L) = 2 Re sum_n v_n z_n^l with z = exp(log_z); v and log_z (..., N) complex, broadcastable.

    ``backend``: None ($SSMZOO_BACKEND or auto), "auto", or a name in ``dispatch.backends``."""
    _check_log_z("vandermonde", log_z)
    if not isinstance(v, Tensor) or not v.is_complex():
        raise ValueError(f"vandermonde: v must be a complex tensor (..., N), got {getattr(v, 'dtype', type(v))}")
    if v.dtype != log_z.dtype:
        raise ValueError(f"vandermonde: v and log_z must share one dtype, got {v.dtype} and {log_z.dtype}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"vandermonde: length must be a positive int, got {length!r}")
    try:
        shape = torch.broadcast_shapes(v.shape, log_z.shape)
    except RuntimeError as e:
        raise ValueError(f"vandermonde: v {_shape(v)} and log_z {_shape(log_z)} must broadcast "
                         "(the same state size N in the last dimension)") from e
    request = Request(v.device, v.dtype, grad=grad_needed(v, log_z), size=shape.numel() * length)
    with autocast_off(v.device):  # complex arithmetic, which autocast would send to half precision
        return dispatch.choose(backend, request).fn(v, log_z, length)


def vandermonde_transpose(u: Tensor, log_z: Tensor, *, backend: str | None = None) -> Tensor:
    """s[..., n] = sum_l u[..., l] z_n^(L-1-l): the state a diagonal SSM holds after reading u.

    u (..., L) real or complex; log_z (..., N) complex; u's leading dims broadcast against log_z's."""
    _check_log_z("vandermonde_transpose", log_z)
    if not isinstance(u, Tensor) or u.dim() < 1 or u.shape[-1] < 1:
        raise ValueError(f"vandermonde_transpose: u must be a tensor (..., L) with L >= 1, got "
                         f"{getattr(u, 'shape', type(u).__name__)}")
    if not (u.is_floating_point() or u.is_complex()):
        raise ValueError(f"vandermonde_transpose: u must be a real or complex floating tensor, got {u.dtype}")
    try:
        lead = torch.broadcast_shapes(u.shape[:-1], log_z.shape[:-1])
    except RuntimeError as e:
        raise ValueError(f"vandermonde_transpose: the leading dims of u {_shape(u)} (all but L) and of "
                         f"log_z {_shape(log_z)} (all but N) must broadcast") from e
    request = Request(u.device, log_z.dtype, grad=grad_needed(u, log_z),
                      size=lead.numel() * log_z.shape[-1] * u.shape[-1])
    if u.dtype in HALF_DTYPES:  # an activation under autocast: the sum is taken in log_z's precision
        u = u.to(log_z.real.dtype)
    with autocast_off(u.device):
        return transpose_dispatch.choose(backend, request).fn(u, log_z)


__all__ = [
    "MATERIALISE_LIMIT", "dispatch", "transpose_dispatch", "vandermonde", "vandermonde_blocks", "vandermonde_chunked",
    "vandermonde_reference", "vandermonde_transpose", "vandermonde_transpose_blocks", "vandermonde_transpose_chunked",
    "vandermonde_transpose_reference",
]
