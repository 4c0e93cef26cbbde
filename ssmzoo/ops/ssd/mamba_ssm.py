"""mamba-ssm's fused Triton SSD (``mamba_chunk_scan_combined``, Dao & Gu), used when that package is
installed and the input is on CUDA. Imported on first call only: never at ssmzoo import time.

What it can do, and so how it is registered: outputs, gradients, an initial state and a final state
per row (batch, heads, headdim, d_state) for unpacked batches; packed documents through ``seq_idx``
(``Segments.doc``) for the outputs only (its per-document final states come without gradients, and its
initial state is per row, not per document), so a packed call that needs a state goes to another backend.
Float32 and half precision only.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from .inputs import SSDInputs


def available() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None


def ssd_mamba_ssm(inputs: SSDInputs, *, output_final_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_state, segments = inputs
    if segments is not None and (initial_state is not None or output_final_state):
        raise ValueError("ssd: the mamba_ssm backend takes no initial state and returns no final state for "
                         "packed documents")
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    seq_idx = None if segments is None else segments.doc.to(torch.int32).contiguous()  # its kernels mark documents so
    out = mamba_chunk_scan_combined(
        x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_state, seq_idx=seq_idx,
        dt_softplus=dt_softplus, dt_limit=tuple(dt_limit), return_final_states=output_final_state)
    if output_final_state:
        y, final = out
        return y, final.to(torch.promote_types(x.dtype, torch.float32))
    return out
