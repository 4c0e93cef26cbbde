"""One token of a Mamba language model: its inputs (:class:`MambaLMStepWeights`, :class:`MambaLMStepInputs`) and
every check of them (:func:`check_mamba_lm_step`: shapes only, as cheap as a token's step allows; the C++ backend
range-checks the ids)."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ..checks import fake_lm_step, lm_step_state_count, lm_step_token_and_layers
from ..mamba_inner.inputs import State
from ..mamba_step.inputs import MambaStepWeights

OP = "mamba_lm_step"


class MambaLMStepWeights(NamedTuple):
    """The model's parameters: ``layers[i]`` is block i's mixer, ``norm_weights[i]`` its RMSNorm; ``eps``
    the RMSNorms' epsilon."""

    embedding: Tensor                      # (vocab, d_model)
    norm_weights: tuple[Tensor, ...]       # (d_model,) per block
    layers: tuple[MambaStepWeights, ...]
    norm_f_weight: Tensor                  # (d_model,)
    lm_head_weight: Tensor                 # (vocab, d_model)
    eps: float
    # The C++ backend's copies of the matrices packed for its decode matmuls (``pack_weights``: per layer
    # in_proj, x_proj, dt_proj, out_proj, then the head), or None (it multiplies with ATen). A snapshot:
    # pack again after changing the weights. The reference ignores it.
    packed: tuple[Tensor, ...] | None = None
    # Per packed matrix, the row scales of int8 panels (padded to the panels; empty tensors for the others), or
    # None: no int8 panels. Panels may hold a matrix's stored form (bfloat16, or int8 with these scales;
    # ``LanguageModel.quantize``), whose value is the matrix the weights give.
    scales: tuple[Tensor, ...] | None = None


class MambaLMStepInputs(NamedTuple):
    """token (batch,) integer ids; state one (conv_state (batch, D, W-1), ssm_state (batch, D, N)) per block."""

    token: Tensor
    state: list[State]
    weights: MambaLMStepWeights


def check_mamba_lm_step(x: MambaLMStepInputs) -> None:
    token, state, weights = x
    lm_step_token_and_layers("mamba_lm_step", token, weights)
    check_state_count(state, weights)


def check_state_count(state: list[State], weights: MambaLMStepWeights) -> None:
    lm_step_state_count("mamba_lm_step", state, weights)


def fake_mamba_lm_step(inputs: MambaLMStepInputs) -> tuple[Tensor, list[State]]:
    """Empty outputs shaped and typed like the reference's (the custom operators' fake implementation)."""
    w = inputs.weights
    return fake_lm_step(inputs.token, inputs.state, w.embedding, w.lm_head_weight.shape[0])
