"""The Vandermonde kernel's inputs and every check of them: :class:`VandermondeInputs` /
:func:`check_vandermonde`, and the transposed product's :class:`TransposeInputs` /
:func:`check_vandermonde_transpose`."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..checks import one_device, positive_int


class VandermondeInputs(NamedTuple):
    """v (..., N) complex, the folded coefficients C_n B̄_n; log_z (..., N) complex, log Ā_n (broadcastable
    with v, one dtype); length L."""

    v: Tensor
    log_z: Tensor
    length: int


class TransposeInputs(NamedTuple):
    """u (..., L) real or complex; log_z (..., N) complex; u's leading dims broadcast against log_z's."""

    u: Tensor
    log_z: Tensor


def _check_log_z(op: str, log_z: object) -> None:
    if not isinstance(log_z, Tensor) or not log_z.is_complex() or log_z.dim() < 1 or log_z.shape[-1] < 1:
        raise ValueError(f"{op}: log_z must be a complex tensor (..., N) with N >= 1, got "
                         f"{getattr(log_z, 'dtype', type(log_z).__name__)} {getattr(log_z, 'shape', '')}")


def check_vandermonde(x: VandermondeInputs) -> torch.Size:
    """Checks ``x``; returns the broadcast shape of v and log_z (..., N)."""
    op = "vandermonde"
    v, log_z, length = x
    _check_log_z(op, log_z)
    if not isinstance(v, Tensor) or not v.is_complex():
        raise ValueError(f"{op}: v must be a complex tensor (..., N), got {getattr(v, 'dtype', type(v))}")
    if v.dtype != log_z.dtype:
        raise ValueError(f"{op}: v and log_z must share one dtype, got {v.dtype} and {log_z.dtype}")
    positive_int(op, "length", length)
    try:
        shape = torch.broadcast_shapes(v.shape, log_z.shape)
    except RuntimeError as e:
        raise ValueError(f"{op}: v {tuple(v.shape)} and log_z {tuple(log_z.shape)} must broadcast "
                         "(the same state size N in the last dimension)") from e
    one_device(op, {"v": v, "log_z": log_z})
    return shape


def check_vandermonde_transpose(x: TransposeInputs) -> torch.Size:
    """Checks ``x``; returns the broadcast shape of the leading dims."""
    op = "vandermonde_transpose"
    u, log_z = x
    _check_log_z(op, log_z)
    if not isinstance(u, Tensor) or u.dim() < 1 or u.shape[-1] < 1:
        raise ValueError(f"{op}: u must be a tensor (..., L) with L >= 1, got {getattr(u, 'shape', type(u).__name__)}")
    if not (u.is_floating_point() or u.is_complex()):
        raise ValueError(f"{op}: u must be a real or complex floating tensor, got {u.dtype}")
    try:
        lead = torch.broadcast_shapes(u.shape[:-1], log_z.shape[:-1])
    except RuntimeError as e:
        raise ValueError(f"{op}: the leading dims of u {tuple(u.shape)} (all but L) and of log_z "
                         f"{tuple(log_z.shape)} (all but N) must broadcast") from e
    one_device(op, {"u": u, "log_z": log_z})
    return lead
