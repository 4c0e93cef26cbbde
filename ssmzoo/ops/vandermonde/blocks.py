"""The Vandermonde kernel by powers in blocks: a few exponentials and one real batched matmul.

With a block size c and l = c·k + j (0 <= j < c), z^l = z^(c·k) · z^j, so

    K[c·k + j] = 2 Re Σ_n (v_n z_n^(c·k)) · z_n^j = 2 (Pᵀ Q)[k, j],
    P = [Re(v z^(c·k)); −Im(v z^(c·k))] (2N, L/c),  Q = [Re z^j; Im z^j] (2N, c)

(Re(ab) = Re a Re b − Im a Im b). Only N·(c + L/c) exponentials instead of N·L, each from the
same exp(l · log z) the reference evaluates (so the rounding is the reference's, plus one complex
product), and the sum over n is a real matmul. With c ≈ √L the intermediates are O(N √L) per row,
so memory stays small in forward and in backward, which autograd derives (matmuls and exps of the
same small tensors). The transposed product uses the same split on the reversed input.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .inputs import TransposeInputs, VandermondeInputs


# The block size while torch.compile or torch.export traces: for a dynamic (symbolic) length, ⌈√L⌉ would break the
# graph (math.isqrt of a symbol) or, computed by branching on L, recompile for new lengths. Any block size gives the
# same values (each power is still one exp(l · log z), times one complex product), so a traced graph uses this one
# for every length; 32 = ⌈√1024⌉, S4's default l_max.
TRACED_BLOCK = 32


def block_size(length: int) -> int:
    """⌈√length⌉: balances the c inner and L/c outer powers (``TRACED_BLOCK`` while a compiler traces)."""
    if torch.compiler.is_compiling():
        return TRACED_BLOCK
    return max(1, math.isqrt(length - 1) + 1) if length > 1 else 1


def block_count(length: int, block: int) -> int:
    """⌈length / block⌉; while a compiler traces, one more (a block of zero padding), so that the count is at least 2
    for every length: a dimension of size 1 is specialised when traced, and a longer input would compile again."""
    return -(-length // block) + (1 if torch.compiler.is_compiling() else 0)


def _powers(log_z: Tensor, block: int, blocks: int) -> tuple[Tensor, Tensor]:
    """z^j (..., N, c) for j < c and z^(c·k) (..., N, L/c), each by one exp of l · log z."""
    rdtype, device = log_z.real.dtype, log_z.device
    inner = torch.exp(log_z[..., None] * torch.arange(block, device=device, dtype=rdtype))
    outer = torch.exp(log_z[..., None] * (torch.arange(blocks, device=device, dtype=rdtype) * block))
    return inner, outer


def vandermonde_blocks(x: VandermondeInputs, block: int | None = None) -> Tensor:
    """Same as :func:`vandermonde_reference`: K (..., L) = 2 Re Σ_n v_n z_n^l, by powers in blocks."""
    v, log_z, length = x
    block = block or block_size(length)
    blocks = block_count(length, block)
    inner, outer = _powers(log_z, block, blocks)
    coarse = v[..., None] * outer  # (..., N, L/c): v_n z_n^(c·k)
    p = torch.cat([coarse.real, -coarse.imag], -2)  # (..., 2N, L/c)
    q = torch.cat([inner.real, inner.imag], -2)  # (..., 2N, c), broadcast over v's extra leading dims
    k = 2 * torch.matmul(p.transpose(-1, -2), q)  # (..., L/c, c)
    return k.flatten(-2)[..., :length]


def vandermonde_transpose_blocks(x: TransposeInputs, block: int | None = None) -> Tensor:
    """Same as :func:`vandermonde_transpose_reference`: s[..., n] = Σ_l u[..., l] z_n^(L-1-l).

    With u' the reversed input (zero-padded to a whole number of blocks), s_n = Σ_k z_n^(c·k)
    Σ_j u'[c·k + j] z_n^j: one matmul (L/c, c) @ (c, N) per row, then a weighted sum over k."""
    u, log_z = x
    length = u.shape[-1]
    block = block or block_size(length)
    blocks = block_count(length, block)
    inner, outer = _powers(log_z, block, blocks)
    rev = torch.nn.functional.pad(u.flip(-1), (0, blocks * block - length)).unflatten(-1, (blocks, block))
    if u.is_complex():
        partial = torch.matmul(rev.to(log_z.dtype), inner.transpose(-1, -2))  # (..., L/c, N)
    else:
        # A real input times complex powers: one real matmul against [Re z^j, Im z^j].
        n = log_z.shape[-1]
        q = torch.cat([inner.real, inner.imag], -2).transpose(-1, -2)  # (..., c, 2N)
        ri = torch.matmul(rev.to(q.dtype), q)  # (..., L/c, 2N)
        partial = torch.complex(ri[..., :n], ri[..., n:])
    return (partial * outer.transpose(-1, -2)).sum(-2)
