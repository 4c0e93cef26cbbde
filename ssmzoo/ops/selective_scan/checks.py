"""Argument checks for the selective scan, shared by every backend: a clear ValueError naming the
argument, before any kernel sees the input."""

from __future__ import annotations

from torch import Tensor

from .reference import ScanInputs


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_selective_scan_args(x: ScanInputs) -> None:
    u, delta, A, B, C, D, z, delta_bias, _, initial_state = x
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, D, L), got shape {_shape(u)}")
    batch, d_inner, length = u.shape
    if length < 1:
        raise ValueError("selective_scan: u must have length L >= 1")
    if not u.is_floating_point():
        raise ValueError(f"selective_scan: u must be a floating tensor, got {u.dtype}")
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {_shape(u)}, got {_shape(delta)}")
    if A.is_complex():
        raise ValueError("selective_scan: A must be real (complex A is not supported)")
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"selective_scan: A must be (D={d_inner}, N), got shape {_shape(A)}")
    d_state = A.shape[1]
    for name, BC in (("B", B), ("C", C)):
        if BC.is_complex():
            raise ValueError(f"selective_scan: {name} must be real")
        if BC.dim() == 2:
            ok = BC.shape == (d_inner, d_state)
        elif BC.dim() == 3:
            ok = BC.shape == (batch, d_state, length)
        elif BC.dim() == 4:
            ok = BC.shape[0] == batch and BC.shape[2:] == (d_state, length) and BC.shape[1] >= 1 \
                and d_inner % BC.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"selective_scan: {name} must be (D={d_inner}, N={d_state}), (batch={batch}, N, L={length}) or "
                f"(batch, G, N, L) with G dividing D; got shape {_shape(BC)}"
            )
    for name, vec in (("D", D), ("delta_bias", delta_bias)):
        if vec is not None and vec.shape != (d_inner,):
            raise ValueError(f"selective_scan: {name} must be (D={d_inner},), got shape {_shape(vec)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must have u's shape {_shape(u)}, got {_shape(z)}")
    if initial_state is not None and initial_state.shape != (batch, d_inner, d_state):
        raise ValueError(
            f"selective_scan: initial_state must be (batch={batch}, D={d_inner}, N={d_state}), "
            f"got shape {_shape(initial_state)}"
        )
    devices = {t.device for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"selective_scan: all tensors must be on one device, got {sorted(map(str, devices))}")
