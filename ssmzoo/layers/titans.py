"""Titans' neural long-term memory as a sequence layer (Behrouz, Zhong, Mirrokni, 2025).

Per head, the memory is a small MLP M whose weights are *learned while reading*: each token
writes the association k_t → v_t by a gradient step on ‖M(k_t) − v_t‖² (eq. 12) with momentum
("surprise", eq. 10) and a forgetting gate (eq. 13); reading is y_t = M(q_t) (eq. 15). The step
θ_t, momentum η_t and forgetting α_t are data-dependent gates. Training runs chunk by chunk
(section 3.2): ops/neural_memory/chunked.py; the per-token rule is ops/neural_memory/reference.py.

Chunks are aligned to the absolute position in the stream, and a token is read from the weights
as they were *before* its chunk's update. The state carries the tokens of the unfinished chunk,
so ``step`` (one token) and ``forward`` on any split of a stream give exactly the same outputs:
stepping buffers tokens and updates the weights when a chunk fills, as forward does.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..modules.checks import check_bool, check_float, check_int
from ..modules.padding import padding_mask
from ..modules.rmsnorm import RMSNorm
from ..modules.short_conv import ShortConvolution
from ..ops import neural_memory as memory_op
from ..ops.neural_memory import neural_memory
from .base import SequenceLayer, input_checks_enabled, register

# Gates are kept strictly inside (0, 1) so their logs (used by the chunked scan) stay finite.
_GATE_EPS = 1e-6


class NeuralMemoryState(NamedTuple):
    """A stream's state. weights, momentum: per MLP layer (batch, heads, out, in);
    conv: the last conv_kernel−1 projected inputs (batch, 3·d_model, conv_kernel−1);
    keys, values (batch, heads, chunk_size, d_head) and gates (batch, heads, chunk_size, 3):
    the unfinished chunk's tokens (zeros past ``filled``); filled (batch,): how many there are."""

    weights: tuple[Tensor, ...]
    momentum: tuple[Tensor, ...]
    conv: Tensor
    keys: Tensor
    values: Tensor
    gates: Tensor
    filled: Tensor


@register("neural_memory")
class NeuralMemory(SequenceLayer):
    """Titans' neural long-term memory. Input and output (batch, length, d_model).

    Args:
        d_model: model width; split evenly over ``heads``.
        heads: independent memories, each with its own MLP weights over d_model/heads channels.
        memory_depth: layers of each memory MLP (1: a linear memory, a matrix).
        memory_expansion: hidden width of the memory MLP as a multiple of d_model/heads.
        chunk_size: tokens per parallel chunk (1 is the exact per-token rule).
        conv_kernel: width of the short causal depthwise conv after the q/k/v projections (0: none).
        qk_norm: ℓ2-normalise queries and keys (as in the paper).
        max_lr: upper bound of the data-dependent step θ_t = max_lr · sigmoid(·).
        neural_memory_backend: backend of the memory op (None: $SSMZOO_BACKEND or "auto"; "chunked",
            "reference"; see ``ssmzoo.ops.neural_memory.dispatch``).
    """

    compiles_with_state = False  # a state holds an unfinished chunk whose fill count sets the shapes

    supported_dtypes = (torch.float32, torch.float64)

    def __init__(
        self,
        d_model: int,
        heads: int = 1,
        memory_depth: int = 2,
        memory_expansion: float = 2.0,
        chunk_size: int = 16,
        conv_kernel: int = 4,
        qk_norm: bool = True,
        max_lr: float = 0.01,
        neural_memory_backend: str | None = None,
    ) -> None:
        super().__init__(d_model, causal=True)
        if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1 or d_model % heads:
            raise ValueError(f"NeuralMemory: heads must be a positive int dividing d_model={d_model}, got {heads!r}")
        check_int("NeuralMemory", "memory_depth", memory_depth)
        check_float("NeuralMemory", "memory_expansion", memory_expansion, above=0.0)
        check_int("NeuralMemory", "chunk_size", chunk_size)
        check_int("NeuralMemory", "conv_kernel (0: no conv)", conv_kernel, minimum=0)
        check_bool("NeuralMemory", "qk_norm", qk_norm)
        check_float("NeuralMemory", "max_lr", max_lr, above=0.0)
        memory_op.dispatch.check_name(neural_memory_backend, "NeuralMemory", "neural_memory_backend")
        self.heads, self.d_head = heads, d_model // heads
        self.memory_depth, self.chunk_size, self.conv_kernel = memory_depth, chunk_size, conv_kernel
        self.qk_norm, self.max_lr, self.neural_memory_backend = qk_norm, max_lr, neural_memory_backend

        self.to_qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.conv: ShortConvolution | None = None
        if conv_kernel > 0:  # a short causal conv on q, k, v, then SiLU
            self.conv = ShortConvolution(3 * d_model, conv_kernel, activation="silu")
            nn.init.normal_(self.conv.weight, std=1 / math.sqrt(conv_kernel))
        # θ, η, α per head. Initial biases: a moderate step, strong momentum, little forgetting. Little means
        # α ≈ 3.4e-4 per token (bias −8): a memory of two or more layers has a fixed point at all-zero weights (the
        # gradient for one layer is proportional to the others), and a forgetting rate above the rate at which
        # writing regrows small weights (about 2e-3 per token on random streams) drives it there: at α ≈ 0.018
        # (bias −4) the memory went silent within a few thousand tokens (tests/test_titans_long_stream.py).
        self.to_gates = nn.Linear(d_model, 3 * heads)
        nn.init.normal_(self.to_gates.weight, std=0.02)
        with torch.no_grad():
            self.to_gates.bias.copy_(torch.tensor([0.0, 1.0, -8.0]).repeat_interleave(heads))
        # The memory's initial weights M_0 (learned by the outer loop), one MLP per head.
        hidden = max(1, round(memory_expansion * self.d_head))
        dims = [self.d_head] + [hidden] * (memory_depth - 1) + [self.d_head]
        self.memory_init = nn.ParameterList(
            nn.Parameter(torch.randn(heads, d_out, d_in) / math.sqrt(d_in)) for d_in, d_out in itertools.pairwise(dims)
        )
        # Read-out: RMS norm per head (group), a SiLU gate from the input, then the output projection.
        self.norm = RMSNorm(d_model, eps=1e-6, group_size=self.d_head)
        self.to_gate = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    # -- contract -----------------------------------------------------------------------------
    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> NeuralMemoryState:
        """Fresh stream: the learned initial weights M_0 (gradients reach them), zero momentum."""
        weights = tuple(w.to(device, dtype).expand(batch_size, *w.shape) for w in self.memory_init)
        b, h, c, d = batch_size, self.heads, self.chunk_size, self.d_head
        zeros = {"device": device, "dtype": dtype}
        return NeuralMemoryState(
            weights=weights,
            momentum=tuple(torch.zeros(b, *w.shape, **zeros) for w in self.memory_init),
            conv=torch.zeros(b, 3 * self.d_model, max(self.conv_kernel - 1, 0), **zeros),
            keys=torch.zeros(b, h, c, d, **zeros),
            values=torch.zeros(b, h, c, d, **zeros),
            gates=torch.zeros(b, h, c, 3, **zeros),
            filled=torch.zeros(b, dtype=torch.long, device=device),
        )

    def _step(self, x_t: Tensor, state: NeuralMemoryState) -> tuple[Tensor, NeuralMemoryState]:
        y, state = self._forward(x_t[:, None], state, None, True)
        return y[:, 0], state

    def _forward(
        self, x: Tensor, state: NeuralMemoryState | None, lengths: Tensor | None, return_state: bool
    ) -> tuple[Tensor, NeuralMemoryState | None]:
        batch, length, _ = x.shape
        fresh = state is None
        filled = 0 if fresh else self._filled(state)
        if fresh:
            state = self._init_state(batch, x.device, x.dtype)
        q, k, v, conv_state = self._project(x, None if fresh else state.conv, return_state)
        gate_logits = rearrange(self.to_gates(x), "b l (g h) -> b h l g", g=3)
        theta = self.max_lr * torch.sigmoid(gate_logits[..., 0])
        eta = torch.sigmoid(gate_logits[..., 1]).clamp(_GATE_EPS, 1 - _GATE_EPS)
        alpha = torch.sigmoid(gate_logits[..., 2]).clamp(_GATE_EPS, 1 - _GATE_EPS)
        if lengths is not None:
            # Padding never writes: no step, no forgetting, momentum carried unchanged.
            real = padding_mask(lengths, length)[:, None, :]
            theta, k, v = theta * real, k * real[..., None], v * real[..., None]
            eta, alpha = torch.where(real, eta, 1 - _GATE_EPS), torch.where(real, alpha, _GATE_EPS)

        # Prepend the unfinished chunk carried in the state, so chunks stay aligned to the stream.
        buffered = state.gates[:, :, :filled]
        k = torch.cat([state.keys[:, :, :filled], k], 2)
        v = torch.cat([state.values[:, :, :filled], v], 2)
        theta = torch.cat([buffered[..., 0], theta], 2)
        eta = torch.cat([buffered[..., 1], eta], 2)
        alpha = torch.cat([buffered[..., 2], alpha], 2)
        q = torch.cat([q.new_zeros(batch, self.heads, filled, self.d_head), q], 2)  # read-outs discarded
        y, (weights, momentum) = neural_memory(
            q, k, v, theta, eta, alpha, chunk_size=self.chunk_size, initial_state=(state.weights, state.momentum),
            output_final_state=True, update_last_partial=False, backend=self.neural_memory_backend,
        )
        y = y[:, :, filled:]
        if not return_state:
            return self._read_out(y, x), None

        total = filled + length
        tail = total % self.chunk_size
        pad = self.chunk_size - tail
        new_state = NeuralMemoryState(
            weights=weights,
            momentum=momentum,
            conv=conv_state,
            keys=F.pad(k[:, :, total - tail :], (0, 0, 0, pad)),
            values=F.pad(v[:, :, total - tail :], (0, 0, 0, pad)),
            gates=F.pad(torch.stack([theta, eta, alpha], -1)[:, :, total - tail :], (0, 0, 0, pad)),
            filled=torch.full((batch,), tail, dtype=torch.long, device=x.device),
        )
        return self._read_out(y, x), new_state

    # -- pieces -------------------------------------------------------------------------------
    def _filled(self, state: NeuralMemoryState) -> int:
        """How many tokens of the unfinished chunk the state holds (read from the device: one sync)."""
        if state.filled.is_meta:
            raise ValueError("NeuralMemory: a state on the meta device has no fill count; stream with real tensors")
        if input_checks_enabled(state.filled.device):
            if bool(((state.filled < 0) | (state.filled >= self.chunk_size)).any()) or \
                    bool((state.filled != state.filled[0]).any()):
                raise ValueError(f"NeuralMemory: state.filled must be one value in [0, chunk_size={self.chunk_size}) "
                                 f"for the whole batch, got {state.filled.tolist()}")
        return int(state.filled[0])

    def _project(
        self, x: Tensor, conv_state: Tensor | None, return_state: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """q, k, v (batch, heads, length, d_head) and, with ``return_state``, the next conv state."""
        u = self.to_qkv(x)
        if self.conv is not None:
            u = self.conv(u, conv_state, return_state)  # SiLU(conv(u))
            if return_state:
                u, conv_state = u
        else:
            u = F.silu(u)
            if return_state and conv_state is None:  # no conv: the state keeps an empty (b, 3·d_model, 0)
                conv_state = u.new_zeros(x.shape[0], 3 * self.d_model, 0)
        q, k, v = (rearrange(t, "b l (h d) -> b h l d", h=self.heads) for t in u.chunk(3, -1))
        if self.qk_norm:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return q, k, v, conv_state

    def _read_out(self, y: Tensor, x: Tensor) -> Tensor:
        y = self.norm(rearrange(y, "b h l d -> b l (h d)"))
        return self.out_proj(y * F.silu(self.to_gate(x)))
