"""mamba-ssm's fused Triton SSD (``mamba_chunk_scan_combined``, Dao & Gu), used when that package is
installed and the input is on CUDA. Imported on first call only: never at ssmzoo import time.

What it can do, and so how it is registered: outputs, gradients, an initial state and a final state
per row (batch, heads, headdim, d_state) for unpacked batches; packed batches through ``seq_idx``
for the outputs only (its per-sequence final states come without gradients, and its initial state
is per row, not per sequence), so a packed call that needs a state goes to another backend.
Float32 and half precision only.
"""

from __future__ import annotations

import importlib.util
import math

import torch
from torch import Tensor


def available() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None


def ssd_mamba_ssm(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    chunk_size: int = 256,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    seq_idx: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    packed = seq_idx is not None or cu_seqlens is not None
    if packed and (initial_state is not None or output_final_state):
        raise ValueError("ssd: the mamba_ssm backend takes no initial state and returns no final state for "
                         "packed sequences")
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    if cu_seqlens is not None and seq_idx is None:  # its kernels mark sequences by seq_idx
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        seq_idx = torch.repeat_interleave(torch.arange(lengths.numel(), device=x.device), lengths)[None]
    if seq_idx is not None:
        seq_idx = seq_idx.to(torch.int32).contiguous()
    out = mamba_chunk_scan_combined(
        x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_state, seq_idx=seq_idx,
        dt_softplus=dt_softplus, dt_limit=tuple(dt_limit), return_final_states=output_final_state)
    if output_final_state:
        y, final = out
        return y, final.to(torch.promote_types(x.dtype, torch.float32))
    return out
