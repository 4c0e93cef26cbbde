"""A transformer block shared by several depths of a language model, each use with its own low-rank adapters:
Zamba2's shared attention block (Glorioso et al. 2024, "The Zamba2 Suite: Technical Report", arXiv 2411.15242,
after Zamba, arXiv 2405.16712, figure 2).

    T(x, e) = MLP(norm2(Attention(norm1([x ‖ e]))))          no residual inside; e: the token embedding

A block of the stack that uses it (``LanguageModel``'s pattern key ``shared_block``) computes

    x + mixer(norm(x + proj(T(x, e))))

with its own ``proj`` and its own adapters: low-rank maps added to the attention's q, k, v projections and to
the MLP's up projection (LoRA, Hu et al. 2021, arXiv 2106.09685, used here in the base model). The weights of T
are stored once (``LanguageModel.shared_blocks``); each use keeps its own attention cache.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..layers.attention import AttentionState
from ..modules.attention import Attention
from ..modules.checks import check_bool, check_float, check_int
from ..modules.mlp import MLP
from ..modules.rmsnorm import RMSNorm


class LowRank(nn.Module):
    """x (..., d_in) -> up(down(x)) (..., d_out): a rank-``rank`` map (a LoRA adapter). Parameters ``down``
    (rank, d_in) and ``up`` (d_out, rank), no biases."""

    def __init__(self, d_in: int, rank: int, d_out: int) -> None:
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)
        self.up = nn.Linear(rank, d_out, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))


class SharedTransformer(nn.Module):
    """The shared block T(x, e) (module docstring): (batch, n, d_model) -> (batch, n, d_model).

    Args:
        d_model: model width.
        heads, kv_heads, head_dim: the attention's heads (head_dim None: attention width / heads).
        rotary, rotary_base, rotary_dim, rotary_interleaved: its rotary positions (see ``modules.Attention``).
        scale: the softmax scale (None: 1/sqrt(head_dim); Zamba2's is 1/sqrt(head_dim / 2)).
        attention_bias: biases in the attention's projections.
        mlp: the MLP's hidden width.
        mlp_gated, mlp_activation, mlp_bias: the MLP's form (Zamba2: gated GELU).
        norm_eps: epsilon of both RMSNorms.
        embedding_input: attend over [x ‖ e] (width 2 · d_model), else over x alone.
        adapter_rank: rank of each use's adapters (0: none).
        attention_adapters: adapters on q, k, v as well as on the MLP.

    Parameters: ``norm`` (over the attention's input), ``attn`` (an :class:`~ssmzoo.modules.Attention` from the
    input width to d_model), ``norm2``, ``mlp``. A use's adapters and projection are a :class:`SharedUse`.
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        rotary: bool = False,
        rotary_base: float = 10000.0,
        rotary_dim: int | None = None,
        rotary_interleaved: bool = False,
        scale: float | None = None,
        attention_bias: bool = False,
        mlp: int = 0,
        mlp_gated: bool = True,
        mlp_activation: Literal["gelu", "silu", "relu", "sigmoid", "relu2"] = "gelu",
        mlp_bias: bool = False,
        norm_eps: float = 1e-5,
        embedding_input: bool = True,
        adapter_rank: int = 0,
        attention_adapters: bool = False,
    ) -> None:
        super().__init__()
        owner = "SharedTransformer"
        check_int(owner, "d_model", d_model)
        check_int(owner, "mlp", mlp)
        check_bool(owner, "embedding_input", embedding_input)
        check_int(owner, "adapter_rank", adapter_rank, minimum=0)
        check_bool(owner, "attention_adapters", attention_adapters)
        if attention_adapters and not adapter_rank:
            raise ValueError(f"{owner}: attention_adapters needs adapter_rank > 0")
        check_float(owner, "norm_eps", norm_eps, above=0.0)
        d_in = 2 * d_model if embedding_input else d_model
        self.d_model, self.d_in, self.embedding_input = d_model, d_in, embedding_input
        self.adapter_rank, self.attention_adapters = adapter_rank, attention_adapters
        self.norm = RMSNorm(d_in, eps=norm_eps)
        self.attn = Attention(d_in, heads, kv_heads=kv_heads, head_dim=head_dim, causal=True, rotary=rotary,
                              rotary_base=rotary_base, rotary_dim=rotary_dim, rotary_interleaved=rotary_interleaved,
                              scale=scale, bias=attention_bias, d_output=d_model)
        self.norm2 = RMSNorm(d_model, eps=norm_eps)
        self.mlp = MLP(d_model, mlp, activation=mlp_activation, gated=mlp_gated, bias=mlp_bias)

    def new_use(self) -> SharedUse:
        """The parameters of one more use: its adapters (sized for this block) and its output projection."""
        return SharedUse(self)

    def init_state(self, batch_size: int, device: torch.device | str | None, dtype: torch.dtype | None
                   ) -> AttentionState:
        """An empty attention cache (one per use)."""
        a = self.attn
        empty = torch.zeros(batch_size, a.kv_heads, 0, a.head_dim, device=device, dtype=dtype)
        return AttentionState(empty, empty.clone())

    def forward(self, x: Tensor, e: Tensor, use: SharedUse, state: AttentionState | None
                ) -> tuple[Tensor, AttentionState]:
        """x, e (batch, n, d_model), the tokens after those ``state`` caches (None: none) -> (proj(T(x, e)) with
        ``use``'s adapters and projection, the cache of every token so far)."""
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        h = self.norm(torch.cat([x, e], -1) if self.embedding_input else x)
        delta = None
        if self.attention_adapters:
            delta = torch.cat([use.q_adapter(h), use.k_adapter(h), use.v_adapter(h)], -1)
        y, keys, values = self.attn.extend(h, state.keys, state.values, delta)
        y = self.norm2(y)
        y = self.mlp(y, up_delta=use.mlp_adapter(y) if use.mlp_adapter is not None else None)
        return use.proj(y), AttentionState(keys, values)


class SharedUse(nn.Module):
    """What one use of a :class:`SharedTransformer` owns: ``proj`` (d_model -> d_model, no bias), and with the
    block's ``adapter_rank`` a :class:`LowRank` adapter on the MLP's up projection (``mlp_adapter``) and, with
    ``attention_adapters``, on q, k and v (``q_adapter``, ``k_adapter``, ``v_adapter``)."""

    def __init__(self, block: SharedTransformer) -> None:
        super().__init__()
        a, rank = block.attn, block.adapter_rank
        self.proj = nn.Linear(block.d_model, block.d_model, bias=False)
        self.mlp_adapter = LowRank(block.d_model, rank, block.mlp.up.out_features) if rank else None
        if block.attention_adapters:
            self.q_adapter = LowRank(block.d_in, rank, a.heads * a.head_dim)
            self.k_adapter = LowRank(block.d_in, rank, a.kv_heads * a.head_dim)
            self.v_adapter = LowRank(block.d_in, rank, a.kv_heads * a.head_dim)
        else:
            self.q_adapter = self.k_adapter = self.v_adapter = None
