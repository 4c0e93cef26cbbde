"""RMSNorm (Zhang & Sennrich, 2019), plain, grouped and gated (Mamba-2's ``RMSNormGated``).

    plain:                  y = x / rms(x) · weight,          rms(x) = sqrt(mean(x²) + eps)
    gated (default order):  y = norm(x · SiLU(z)) · weight    (Mamba-2: the gate before the norm)
    norm_before_gate=True:  y = norm(x) · weight · SiLU(z)
    unit_offset=True:       weight replaced by (1 + weight) (Gemma's and Qwen3.5's norms: weight starts at 0)

With ``group_size`` the mean runs over consecutive groups of that many channels (Mamba-2 normalises
each group of heads alone, so tensor parallelism does not change the result; Titans normalises each
memory head alone). Half-precision inputs are normalised in float32 and returned in their dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .checks import check_bool, check_float, check_int

_HALF = (torch.float16, torch.bfloat16)


class RMSNorm(nn.Module):
    """RMS normalisation over the last dimension of x (..., dim), optionally grouped and gated.

    Args:
        dim: channels.
        eps: added to the mean square.
        group_size: channels per normalisation group (divides dim); None: one group of all.
        norm_before_gate: with a gate z, normalise x first and gate after (else gate, then normalise).
        unit_offset: scale by (1 + weight) (initialised to 0), in the compute dtype, so a checkpoint that stores
            weight − 1 (Qwen3.5) keeps its own tensor: folding the 1 in would round it away in half precision.

    Parameter ``weight`` (dim,), the name nn.RMSNorm and mamba-ssm use, so checkpoints load.
    """

    def __init__(self, dim: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = False, unit_offset: bool = False) -> None:
        super().__init__()
        check_int("RMSNorm", "dim", dim)
        check_float("RMSNorm", "eps", eps, at_least=0.0)
        group_size = dim if group_size is None else group_size
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1 or dim % group_size:
            raise ValueError(f"RMSNorm: group_size must be a positive int dividing dim={dim} or None, got {group_size!r}")
        check_bool("RMSNorm", "norm_before_gate", norm_before_gate)
        check_bool("RMSNorm", "unit_offset", unit_offset)
        self.dim, self.eps, self.group_size, self.norm_before_gate = dim, eps, group_size, norm_before_gate
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """x (..., dim), optional gate z (same shape) -> (..., dim) in x's dtype."""
        if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"RMSNorm: x must be a tensor (..., dim={self.dim}), got {_shape(x)}")
        if z is not None and (not isinstance(z, Tensor) or z.shape != x.shape):
            raise ValueError(f"RMSNorm: the gate z must have x's shape {tuple(x.shape)}, got {_shape(z)}")
        dtype = x.dtype
        compute = torch.float32 if dtype in _HALF else dtype
        x = x.to(compute)
        if z is not None and not self.norm_before_gate:
            x = x * F.silu(z.to(compute))
        weight = self.weight.to(compute) + 1 if self.unit_offset else self.weight.to(compute)
        if self.group_size == self.dim:  # torch's fused kernel: the same formula, one pass (3x faster on CPU)
            y = F.rms_norm(x, (self.dim,), weight, self.eps)
        else:
            groups = rearrange(x, "... (g s) -> ... g s", s=self.group_size)
            groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
            y = rearrange(groups, "... g s -> ... (g s)") * weight
        if z is not None and self.norm_before_gate:
            y = y * F.silu(z.to(compute))
        return y.to(dtype)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.group_size != self.dim else ""
        return (f"{self.dim}, eps={self.eps}{group}" + (", norm_before_gate=True" if self.norm_before_gate else "")
                + (", unit_offset=True" if self.unit_offset else ""))


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__
