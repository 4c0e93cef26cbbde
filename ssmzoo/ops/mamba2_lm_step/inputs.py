"""One token of a Mamba-2 language model: its inputs (:class:`Mamba2BlockWeights`, :class:`Mamba2LMStepWeights`,
:class:`Mamba2LMStepInputs`) and every check of them (:func:`check_mamba2_lm_step`: shapes only, as cheap as a
token's step allows; the C++ backend range-checks the ids)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ..checks import fake_lm_step, lm_step_state_count, lm_step_token_and_layers
from ..quantized import Matrix

OP = "mamba2_lm_step"
# (conv_state (batch, conv_dim, d_conv - 1), ssm_state (batch, heads, headdim, d_state)): a Mamba2 layer's state
State = tuple[Tensor, Tensor]


class Mamba2BlockWeights(NamedTuple):
    """One Mamba-2 mixer (``ssmzoo.layers.Mamba2``'s parameters and settings). Matrices are float tensors,
    bfloat16 tensors or :class:`~ssmzoo.ops.quantized.Int8Matrix` (their dequantized value is the weight)."""

    in_proj_weight: Matrix               # (D_inner + conv_dim + heads, d_model): [z, x, B, C, dt]
    in_proj_bias: Tensor | None
    conv_weight: Tensor                  # (conv_dim, d_conv), conv_dim = D_inner + 2 ngroups d_state
    conv_bias: Tensor | None
    dt_bias: Tensor | None               # (heads,)
    A_log: Tensor                        # (heads,): A_h = -exp(A_log_h)
    D: Tensor | None                     # (heads,) or (D_inner,)
    norm_weight: Tensor | None           # (D_inner,): the gated RMSNorm, or None: y · SiLU(z)
    out_proj_weight: Matrix              # (d_model, D_inner)
    out_proj_bias: Tensor | None
    ngroups: int
    norm_group_size: int                 # channels per group of the gated norm
    norm_before_gate: bool
    norm_eps: float
    dt_limit: tuple[float, float]


class Mamba2LMStepWeights(NamedTuple):
    """The model: embedding, pre-norm residual blocks x + mixer(RMSNorm(x)) (``norm_weights[i]`` block i's norm),
    final RMSNorm, head (a :data:`~ssmzoo.ops.quantized.Matrix`); ``eps`` the RMSNorms' epsilon."""

    embedding: Tensor                    # (vocab, d_model)
    norm_weights: tuple[Tensor, ...]     # (d_model,) per block
    layers: tuple[Mamba2BlockWeights, ...]
    norm_f_weight: Tensor                # (d_model,)
    head_weight: Matrix                  # (vocab, d_model)
    eps: float


class Mamba2LMStepInputs(NamedTuple):
    """token (batch,) integer ids; state one (conv_state, ssm_state) per block."""

    token: Tensor
    state: list[State]
    weights: Mamba2LMStepWeights


def check_mamba2_lm_step(x: Mamba2LMStepInputs) -> None:
    token, state, weights = x
    lm_step_token_and_layers("mamba2_lm_step", token, weights)
    check_state_count(state, weights)


def check_state_count(state: list[State], weights: Mamba2LMStepWeights) -> None:
    lm_step_state_count("mamba2_lm_step", state, weights)


def fake_mamba2_lm_step(inputs: Mamba2LMStepInputs) -> tuple[Tensor, list[State]]:
    """Empty outputs shaped and typed like the reference's (the custom operators' fake implementation)."""
    w = inputs.weights
    return fake_lm_step(inputs.token, inputs.state, w.embedding, w.embedding.shape[0])
