"""Multi-head softmax attention (Vaswani et al., 2017) with what our models need around it:

- a causal and/or sliding-window rule on token positions: query at p sees key at s iff
  s <= p (causal) and |p − s| < window (sliding window; with causal: p − window < s <= p);
- grouped KV heads (GQA, Ainslie et al., 2023): ``kv_heads`` key/value heads, each shared by
  heads / kv_heads query heads;
- rotary position embeddings on queries and keys (``rotary.py``), on all channels of a head or on its first
  ``rotary_dim`` (partial rotary, as Bamba), pairing channels interleaved or by halves (as each checkpoint does);
- a softmax scale other than 1/sqrt(head_dim) (Zamba2's shared attention, Falcon-H1's key multiplier) and an
  output width other than the input's (Zamba2 attends over [x ‖ embedding] and returns d_model);
- RMSNorms on each head of the queries and keys before the rotary (q/k norm: Qwen3, Qwen3.5), and an output gate
  y · sigmoid(g) per channel before the output projection, g projected from the input (Qwen3-Next, Qwen3.5);
- persistent tokens (Titans eq. 19): learned tokens every query may attend to, whatever the mask;
- extra context tokens with their own positions, whose keys and values are prepended (Titans MAC's
  memory read-outs); they follow the same position rule;
- an optional extra boolean mask, ANDed with the rule;
- a KV cache for decoding: prefill with ``forward(..., return_cache=True)``, then ``step`` one token
  at a time; with a sliding window the cache keeps only the last window − 1 keys;
- ``extend``: causal attention of new tokens over the cached keys and values of all the tokens before them and
  their own (a full-attention layer's prefill in pieces and its decoding), with optional additive changes to the
  projections (per-use low-rank adapters of a shared block).

Scores are softmax(q·k · scale), scale = 1/sqrt(head_dim) by default; every query must see at least one key (a causal rule always
lets a token see itself).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .checks import check_bool, check_float, check_int
from .rmsnorm import RMSNorm
from .rotary import rotary as rotate


class KVCache(NamedTuple):
    """keys, values (batch, kv_heads, n, head_dim): the (rotated) keys and values of the tokens seen so
    far, only the last window − 1 with a sliding window; position () long: the next token's position."""

    keys: Tensor
    values: Tensor
    position: Tensor


def attention_mask(
    query_positions: Tensor, key_positions: Tensor, causal: bool, window: int | None
) -> Tensor:
    """(..., n, m) bool, True where the query at query_positions[..., i] may see the key at key_positions[..., j]
    (positions (n,) and (m,), or with the same leading dimensions, e.g. one row of positions per sequence)."""
    diff = query_positions[..., :, None] - key_positions[..., None, :]
    allowed = torch.ones(diff.shape, dtype=torch.bool, device=diff.device)
    if causal:
        allowed = allowed & (diff >= 0)
    if window is not None:
        allowed = allowed & (diff.abs() < window)
    return allowed


def append_to_cache(cache: Tensor, new: Tensor) -> Tensor:
    """[cache ‖ new] along dim 2 (keys or values (batch, kv_heads, n, head_dim)), as a value: every tensor handed
    out before stays what it was. Without autograd (decoding), the result is a prefix view of a buffer with room
    to grow, and the next append writes past its end in place when the cache given is that buffer's latest view
    (the buffer's ``filled`` mark says so); any other cache (an older state, one grown elsewhere) is copied into
    a new buffer. Concatenating instead copied the whole cache at every token: at 1,280 tokens, batch 8 and 12 KV
    heads of 128 channels that was 100 MB per step and half of a Zamba2 step's time."""
    n, m = cache.shape[2], new.shape[2]
    if torch.is_grad_enabled() and (cache.requires_grad or new.requires_grad):
        return torch.cat([cache, new], 2)  # an in-place write would invalidate what autograd saved
    base = cache._base
    if (base is not None and getattr(base, "_ssmzoo_filled", None) == n and base.dim() == 4
            and base.shape[2] >= n + m and cache.data_ptr() == base.data_ptr() and cache.stride() == base.stride()
            and base.shape[:2] == new.shape[:2] and base.shape[3] == new.shape[3] and base.dtype == new.dtype):
        base[:, :, n:n + m] = new
    else:
        base = new.new_empty(new.shape[0], new.shape[1], max(2 * (n + m), 64), new.shape[3])
        base[:, :, :n] = cache
        base[:, :, n:n + m] = new
    base._ssmzoo_filled = n + m  # type: ignore[attr-defined]
    return base[:, :, :n + m]


class Attention(nn.Module):
    """Attention over x (batch, n, d_model) -> (batch, n, d_model).

    Args:
        d_model: model width.
        heads: query heads.
        kv_heads: key/value heads (divides heads; None: heads, i.e. plain multi-head attention).
        head_dim: width of each head (None: d_model / heads).
        causal: a query sees only keys at positions <= its own.
        window: sliding-window span (None: unlimited).
        rotary: rotary position embeddings on queries and keys.
        rotary_base: the rotary base frequency.
        persistent_tokens: learned tokens every query attends to (0: none).
        bias: biases in the projections.
        rotary_dim: rotate only the first rotary_dim channels of each head (even; None: all, head_dim even).
        rotary_interleaved: pair channels (2i, 2i + 1) (RoFormer), else (i, i + rotary_dim/2) (GPT-NeoX, Llama,
            transformers' checkpoints).
        scale: the softmax scale (None: 1/sqrt(head_dim)).
        d_output: width of the output (None: d_model).
        output_gate: multiply the heads' output by sigmoid(g) before ``out``, g (heads · head_dim) a fourth part of
            the input projection.
        qk_norm: RMSNorm each query and key head (weights ``q_norm``, ``k_norm`` of head_dim, shared by the heads)
            before the rotary.
        qk_norm_eps: their epsilon.
        qk_norm_unit_offset: they scale by (1 + weight) (Qwen3.5's norms; see ``RMSNorm``).

    Parameters: ``qkv`` (one projection to [q ‖ k ‖ v], or [q ‖ k ‖ v ‖ g] with the output gate), ``out``,
    ``q_norm`` and ``k_norm`` with qk_norm, and ``persistent`` (tokens, d_model).
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        causal: bool = True,
        window: int | None = None,
        rotary: bool = True,
        rotary_base: float = 10000.0,
        persistent_tokens: int = 0,
        bias: bool = False,
        rotary_dim: int | None = None,
        rotary_interleaved: bool = True,
        scale: float | None = None,
        d_output: int | None = None,
        output_gate: bool = False,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-6,
        qk_norm_unit_offset: bool = False,
    ) -> None:
        super().__init__()
        check_int("Attention", "d_model", d_model)
        check_int("Attention", "heads", heads)
        kv_heads = heads if kv_heads is None else check_int("Attention", "kv_heads", kv_heads)
        if heads % kv_heads:
            raise ValueError(f"Attention: kv_heads={kv_heads} must divide heads={heads}")
        if head_dim is None:
            if d_model % heads:
                raise ValueError(f"Attention: heads={heads} must divide d_model={d_model} (or give head_dim)")
            head_dim = d_model // heads
        check_int("Attention", "head_dim", head_dim)
        check_bool("Attention", "causal", causal)
        if window is not None:
            check_int("Attention", "window", window)
        check_bool("Attention", "rotary", rotary)
        check_bool("Attention", "rotary_interleaved", rotary_interleaved)
        if rotary_dim is not None:
            check_int("Attention", "rotary_dim", rotary_dim)
            if rotary_dim > head_dim:
                raise ValueError(f"Attention: rotary_dim={rotary_dim} must be at most head_dim={head_dim}")
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        if rotary and rotary_dim % 2:
            raise ValueError(f"Attention: rotary embeddings need an even head_dim (or rotary_dim), got {rotary_dim}")
        check_float("Attention", "rotary_base", rotary_base, above=1.0)
        check_int("Attention", "persistent_tokens", persistent_tokens, minimum=0)
        check_bool("Attention", "bias", bias)
        check_float("Attention", "scale", scale, above=0.0, optional=True)
        d_output = d_model if d_output is None else check_int("Attention", "d_output", d_output)
        check_bool("Attention", "output_gate", output_gate)
        check_bool("Attention", "qk_norm", qk_norm)
        check_float("Attention", "qk_norm_eps", qk_norm_eps, above=0.0)
        check_bool("Attention", "qk_norm_unit_offset", qk_norm_unit_offset)
        self.d_model, self.heads, self.kv_heads, self.head_dim = d_model, heads, kv_heads, head_dim
        self.causal, self.window, self.rotary, self.rotary_base = causal, window, rotary, rotary_base
        self.rotary_dim, self.rotary_interleaved, self.d_output = rotary_dim, rotary_interleaved, d_output
        self.scale, self.output_gate = scale, output_gate
        self.qkv = nn.Linear(d_model, (heads * (2 if output_gate else 1) + 2 * kv_heads) * head_dim, bias=bias)
        if qk_norm:
            self.q_norm = RMSNorm(head_dim, eps=qk_norm_eps, unit_offset=qk_norm_unit_offset)
            self.k_norm = RMSNorm(head_dim, eps=qk_norm_eps, unit_offset=qk_norm_unit_offset)
        else:
            self.q_norm = self.k_norm = None
        self.out = nn.Linear(heads * head_dim, d_output, bias=bias)
        if persistent_tokens:
            self.persistent = nn.Parameter(torch.randn(persistent_tokens, d_model) / math.sqrt(d_model))
        else:
            self.register_parameter("persistent", None)

    # -- pieces -------------------------------------------------------------------------------
    def _project(self, x: Tensor, delta: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of ``_project_gated`` (callers that attend without the output gate)."""
        return self._project_gated(x, delta)[:3]

    def _project_gated(self, x: Tensor, delta: Tensor | None = None
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """x (..., n, d_model) -> q (..., heads, n, head_dim) and k, v (..., kv_heads, n, head_dim), q and k
        normalised with qk_norm, and the output gate's input g (..., n, heads · head_dim) or None; ``delta`` (...,
        n, qkv's width) is added to the projection first (a low-rank adapter's output)."""
        sizes = [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim]
        if self.output_gate:
            sizes.append(self.heads * self.head_dim)
        qkv = self.qkv(x)
        if delta is not None:
            qkv = qkv + delta
        q, k, v, *g = qkv.split(sizes, dim=-1)
        q, k, v = (rearrange(t, "... n (h d) -> ... h n d", d=self.head_dim) for t in (q, k, v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v, (g[0] if g else None)

    def _rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        if not self.rotary:
            return x
        if self.rotary_dim == self.head_dim:
            return rotate(x, positions, self.rotary_base, self.rotary_interleaved)
        r = self.rotary_dim  # partial rotary: the other channels carry no position
        return torch.cat([rotate(x[..., :r], positions, self.rotary_base, self.rotary_interleaved), x[..., r:]], -1)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, causal: bool = False,
                gate: Tensor | None = None) -> Tensor:
        """softmax attention of q (b, heads, n, hd) over [persistent ‖ k] (b, kv_heads, m, hd); allowed
        (n, m) or broadcastable to (b, heads, n, m), or None with ``causal`` (query i sees keys 0..i, n = m) or
        alone (every key) -> (b, n, d_output); ``gate`` (b, n, heads · hd): the output gate's input."""
        if self.persistent is not None:
            _, pk, pv = self._project(self.persistent)  # (kv_heads, P, hd)
            batch = q.shape[0]
            k = torch.cat([pk.expand(batch, -1, -1, -1).to(k.dtype), k], 2)
            v = torch.cat([pv.expand(batch, -1, -1, -1).to(v.dtype), v], 2)
            allowed = torch.cat([allowed.new_ones(*allowed.shape[:-1], pk.shape[1]), allowed], -1)
        # Grouped heads read their KV head in place (enable_gqa): repeating K and V copied them, 14x slower on CPU.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=causal and allowed is None,
                                           scale=self.scale, enable_gqa=self.kv_heads != self.heads)
        y = rearrange(y, "b h n d -> b n (h d)")
        return self.out(y if gate is None else y * torch.sigmoid(gate))

    def _trim(self, t: Tensor) -> Tensor:
        """What the cache keeps of keys/values t (b, g, n, hd): all, or the last window − 1."""
        if self.window is None:
            return t
        return t[:, :, max(0, t.shape[2] - (self.window - 1)) :]

    # -- whole sequences ----------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        positions: Tensor | None = None,
        context: Tensor | None = None,
        context_positions: Tensor | None = None,
        mask: Tensor | None = None,
        return_cache: bool = False,
    ) -> Tensor | tuple[Tensor, KVCache]:
        """x (batch, n, d_model) -> y (batch, n, d_model), or (y, cache) with ``return_cache``.

        positions (n,) int: the tokens' positions (rotary, and the causal/window rule); default 0..n−1.
        context (batch, m, d_model) with context_positions (m,): tokens whose keys and values are
            prepended to x's (queries come from x only).
        mask: bool, (n, m + n) or broadcastable to (batch, heads, n, m + n) over [context ‖ x]; True
            where a query may look, ANDed with the rule (persistent tokens stay visible).
        return_cache: also return the KV cache that ``step`` continues from (needs causal attention,
            default positions, no context and no extra mask)."""
        self._check_x(x, "x", 3, "(batch, n, d_model)")
        n = x.shape[1]
        positions = self._check_positions(positions, n, x.device, "positions")
        q, k, v, gate = self._project_gated(x)
        q, k = self._rotate(q, positions), self._rotate(k, positions)
        keys, values, key_positions = k, v, positions
        if context is not None:
            self._check_x(context, "context", 3, "(batch, m, d_model)")
            if context.shape[0] != x.shape[0]:
                raise ValueError(f"Attention: context has batch size {context.shape[0]}, x has {x.shape[0]}")
            if context_positions is None:
                raise ValueError("Attention: context needs context_positions (m,)")
            context_positions = self._check_positions(context_positions, context.shape[1], x.device,
                                                      "context_positions")
            _, ck, cv = self._project(context)
            keys = torch.cat([self._rotate(ck, context_positions), k], 2)
            values = torch.cat([cv, v], 2)
            key_positions = torch.cat([context_positions, positions])
        elif context_positions is not None:
            raise ValueError("Attention: context_positions given without context")
        allowed = attention_mask(positions, key_positions, self.causal, self.window)
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() < 2 \
                    or tuple(mask.shape[-2:]) != tuple(allowed.shape):
                got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"Attention: mask must be a bool tensor (..., n={n}, keys={allowed.shape[1]}), "
                                 f"got {got}")
            allowed = allowed & mask
        y = self._attend(q, keys, values, allowed, gate=gate)
        if not return_cache:
            return y
        if not self.causal or context is not None or mask is not None:
            raise ValueError("Attention: return_cache needs causal attention without context or mask")
        return y, KVCache(self._trim(k), self._trim(v), positions[-1] + 1)

    def extend(self, x: Tensor, keys: Tensor, values: Tensor, delta: Tensor | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:
        """Causal attention of x (batch, n, d_model), the tokens at positions m .. m + n − 1, over the cached keys
        and values (batch, kv_heads, m, head_dim) of the m tokens before them and over their own. Returns y (batch,
        n, d_output) and the keys and values of all m + n tokens (rotated keys, as cached). Equals ``forward`` of
        the whole sequence at those positions; needs causal attention without a window or persistent tokens.
        ``delta`` is added to x's projections (see ``_project``). Shapes are the caller's to check."""
        if not self.causal or self.window is not None or self.persistent is not None:
            raise ValueError("Attention.extend: needs causal attention without a window or persistent tokens")
        m, n = keys.shape[2], x.shape[1]
        positions = torch.arange(m, m + n, device=x.device)
        q, k, v, gate = self._project_gated(x, delta)
        q, k = self._rotate(q, positions), self._rotate(k, positions)
        if m:
            k, v = append_to_cache(keys.to(k.dtype), k), append_to_cache(values.to(v.dtype), v)
        # One new token sees every key; a first piece is plainly causal; a later piece needs its offset mask.
        allowed = None if n == 1 or m == 0 else attention_mask(positions, torch.arange(m + n, device=x.device),
                                                               True, None)
        return self._attend(q, k, v, allowed, causal=m == 0, gate=gate), k, v

    # -- one token at a time ------------------------------------------------------------------
    def init_cache(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> KVCache:
        """The cache of a fresh stream: no keys yet, next position 0."""
        check_int("Attention.init_cache", "batch_size", batch_size)
        device = device if device is not None else self.qkv.weight.device
        dtype = dtype if dtype is not None else self.qkv.weight.dtype
        empty = torch.zeros(batch_size, self.kv_heads, 0, self.head_dim, device=device, dtype=dtype)
        return KVCache(empty, empty.clone(), torch.zeros((), dtype=torch.long, device=device))

    def step(self, x_t: Tensor, cache: KVCache, context: Tensor | None = None) -> tuple[Tensor, KVCache]:
        """One token: x_t (batch, d_model) and the cache -> (y_t (batch, d_model), next cache).
        Equals ``forward`` on the whole sequence at that position.

        context (batch, d_model): a context token at x_t's position (as ``forward``'s context with
        context_positions equal to positions), whose key and value join the cache just before x_t's."""
        if not self.causal:
            raise ValueError("Attention.step: needs causal attention (this one sees the future)")
        self._check_x(x_t, "x_t", 2, "(batch, d_model)")
        if context is not None:
            self._check_x(context, "context", 2, "(batch, d_model)")
            if context.shape[0] != x_t.shape[0] or self.window is not None:
                raise ValueError("Attention.step: context must have x_t's batch size, and needs window=None")
        if not isinstance(cache, KVCache):
            raise ValueError(f"Attention.step: cache must be a KVCache (from init_cache or forward with "
                             f"return_cache=True), got {type(cache).__name__}")
        expected = (x_t.shape[0], self.kv_heads, self.head_dim)
        for name, t in (("keys", cache.keys), ("values", cache.values)):
            if not isinstance(t, Tensor) or t.dim() != 4 or (t.shape[0], t.shape[1], t.shape[3]) != expected:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"Attention.step: cache.{name} must be (batch={expected[0]}, kv_heads="
                                 f"{expected[1]}, n, head_dim={expected[2]}), got {got}")
        q, k, v, gate = self._project_gated(x_t[:, None])
        position = cache.position.reshape(1)
        q, k = self._rotate(q, position), self._rotate(k, position)
        if context is not None:
            _, ck, cv = self._project(context[:, None])
            k, v = torch.cat([self._rotate(ck, position), k], 2), torch.cat([cv, v], 2)
        keys = torch.cat([cache.keys.to(k.dtype), k], 2)
        values = torch.cat([cache.values.to(v.dtype), v], 2)
        # Every cached key is visible: the rule is causal, and a sliding-window cache holds only the window.
        allowed = torch.ones(1, keys.shape[2], dtype=torch.bool, device=x_t.device)
        y = self._attend(q, keys, values, allowed, gate=gate)
        return y[:, 0], KVCache(self._trim(keys), self._trim(values), cache.position + 1)

    # -- checks -------------------------------------------------------------------------------
    def _check_x(self, x: Tensor, arg: str, rank: int, doc: str) -> None:
        if not isinstance(x, Tensor) or x.dim() != rank or x.shape[-1] != self.d_model:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Attention: {arg} must be {doc} with d_model={self.d_model}, got {got}")

    @staticmethod
    def _check_positions(positions: Tensor | None, n: int, device: torch.device, arg: str) -> Tensor:
        if positions is None:
            return torch.arange(n, device=device)
        if not isinstance(positions, Tensor) or tuple(positions.shape) != (n,) or positions.is_floating_point() \
                or positions.is_complex() or positions.dtype == torch.bool:
            got = f"{positions.dtype} {tuple(positions.shape)}" if isinstance(positions, Tensor) else type(positions).__name__
            raise ValueError(f"Attention: {arg} must be an integer tensor of shape ({n},), got {got}")
        return positions.to(device)

    def extra_repr(self) -> str:
        parts = [f"d_model={self.d_model}", f"heads={self.heads}"]
        if self.kv_heads != self.heads:
            parts.append(f"kv_heads={self.kv_heads}")
        parts += [f"head_dim={self.head_dim}", f"causal={self.causal}"]
        if self.window is not None:
            parts.append(f"window={self.window}")
        if self.persistent is not None:
            parts.append(f"persistent_tokens={self.persistent.shape[0]}")
        if self.output_gate:
            parts.append("output_gate=True")
        if self.q_norm is not None:
            parts.append("qk_norm=True")
        return ", ".join(parts)
