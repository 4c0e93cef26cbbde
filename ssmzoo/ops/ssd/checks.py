"""Argument checks for ``ssd``, shared by every backend: a ValueError naming the argument, before any
kernel sees the input. Returns the number of sequences (the leading size of initial/final states)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

FN = "ssd"


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _real(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{FN}: {name} must be a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{FN}: {name} must be a real floating tensor, got {t.dtype}")
    return t


def _integer(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{FN}: {name} must be an integer tensor, got "
                         f"{t.dtype if isinstance(t, Tensor) else type(t).__name__}")
    return t


def check_ssd_args(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    D: Tensor | None,
    z: Tensor | None,
    dt_bias: Tensor | None,
    dt_softplus: bool,
    dt_limit: tuple[float, float],
    initial_state: Tensor | None,
    output_final_state: bool,
    seq_idx: Tensor | None,
    cu_seqlens: Tensor | None,
) -> int:
    x = _real("x", x)
    if x.dim() != 4:
        raise ValueError(f"{FN}: x must be (batch, length, heads, headdim), got shape {_shape(x)}")
    batch, length, heads, headdim = x.shape
    if length < 1 or batch < 1 or heads < 1 or headdim < 1:
        raise ValueError(f"{FN}: x must have batch, length, heads, headdim >= 1, got shape {_shape(x)}")
    if _real("dt", dt).shape != (batch, length, heads):
        raise ValueError(f"{FN}: dt must be (batch={batch}, length={length}, heads={heads}), got shape {_shape(dt)}")
    if _real("A", A).shape != (heads,):
        raise ValueError(f"{FN}: A must be (heads={heads},), got shape {_shape(A)}")
    B = _real("B", B)
    if B.dim() != 4 or B.shape[:2] != (batch, length) or B.shape[2] < 1 or heads % B.shape[2] or B.shape[3] < 1:
        raise ValueError(f"{FN}: B must be (batch={batch}, length={length}, groups, d_state) with groups "
                         f"dividing heads={heads}, got shape {_shape(B)}")
    if _real("C", C).shape != B.shape:
        raise ValueError(f"{FN}: C must have B's shape {_shape(B)}, got {_shape(C)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{FN}: chunk_size must be a positive int, got {chunk_size!r}")
    if D is not None and _real("D", D).shape not in ((heads,), (heads, headdim)):
        raise ValueError(f"{FN}: D must be (heads={heads},) or (heads, headdim={headdim}), got shape {_shape(D)}")
    if z is not None and _real("z", z).shape != x.shape:
        raise ValueError(f"{FN}: z must have x's shape {_shape(x)}, got {_shape(z)}")
    if dt_bias is not None and _real("dt_bias", dt_bias).shape != (heads,):
        raise ValueError(f"{FN}: dt_bias must be (heads={heads},), got shape {_shape(dt_bias)}")
    if not isinstance(dt_softplus, bool):
        raise ValueError(f"{FN}: dt_softplus must be a bool, got {dt_softplus!r}")
    if not isinstance(output_final_state, bool):
        raise ValueError(f"{FN}: output_final_state must be a bool, got {output_final_state!r}")
    if (not isinstance(dt_limit, (tuple, list)) or len(dt_limit) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in dt_limit)
            or math.isnan(dt_limit[0]) or math.isnan(dt_limit[1]) or dt_limit[0] > dt_limit[1]):
        raise ValueError(f"{FN}: dt_limit must be a pair (low, high) of numbers with low <= high, got {dt_limit!r}")

    num_seqs = batch
    if cu_seqlens is not None:
        cu = _integer("cu_seqlens", cu_seqlens)
        if cu.dim() != 1 or cu.numel() < 2:
            raise ValueError(f"{FN}: cu_seqlens must be 1-D (num_seqs + 1,), got shape {_shape(cu)}")
        if batch != 1:
            raise ValueError(f"{FN}: cu_seqlens packs sequences into one row: x must have batch 1, got {batch}")
        if cu.device != x.device:
            raise ValueError(f"{FN}: cu_seqlens must be on x's device {x.device}, got {cu.device}")
        if int(cu[0]) != 0:
            raise ValueError(f"{FN}: cu_seqlens must start at 0, got {int(cu[0])}")
        if int(cu[-1]) != length:
            raise ValueError(f"{FN}: cu_seqlens must end at length={length} (all tokens packed), got {int(cu[-1])}")
        if bool((cu[1:] < cu[:-1]).any()):
            raise ValueError(f"{FN}: cu_seqlens must be non-decreasing (sorted sequence boundaries)")
        num_seqs = cu.numel() - 1
    if seq_idx is not None:
        s = _integer("seq_idx", seq_idx)
        if s.shape != (batch, length):
            raise ValueError(f"{FN}: seq_idx must be (batch={batch}, length={length}), got shape {_shape(s)}")
        if s.device != x.device:
            raise ValueError(f"{FN}: seq_idx must be on x's device {x.device}, got {s.device}")
        if bool((s[:, 1:] < s[:, :-1]).any()):
            raise ValueError(f"{FN}: seq_idx must be non-decreasing along each row (a sequence is a run of one id)")
        if cu_seqlens is not None:
            lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(x.device)
            implied = torch.repeat_interleave(torch.arange(num_seqs, device=x.device), lengths)
            if not torch.equal(s[0].to(implied.dtype), implied):
                raise ValueError(f"{FN}: seq_idx disagrees with cu_seqlens: token t must have seq_idx k for "
                                 "cu_seqlens[k] <= t < cu_seqlens[k+1]")
        else:
            num_seqs = batch + int((s[:, 1:] != s[:, :-1]).sum())
    if initial_state is not None:
        if _real("initial_state", initial_state).shape != (num_seqs, heads, headdim, B.shape[3]):
            raise ValueError(f"{FN}: initial_state must be (num_seqs={num_seqs}, heads={heads}, headdim={headdim}, "
                             f"d_state={B.shape[3]}), one state per sequence, got shape {_shape(initial_state)}")
    named = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "dt_bias": dt_bias,
             "initial_state": initial_state}
    for name, t in named.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{FN}: {name} must be on x's device {x.device}, got {t.device}")
    return num_seqs
