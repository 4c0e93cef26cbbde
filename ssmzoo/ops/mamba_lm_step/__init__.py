"""One token of a whole Mamba language model: ``mamba_lm_step(token, state, weights)`` -> (logits, next state).

Generation spends its decode loop here: embedding, every block's RMSNorm + Mamba step + residual, the final
RMSNorm and the LM head. Backends, in ``auto``'s preference order: ``cpu`` (cpu.py: the whole token in one C++
call, no gradient, CPU float32/float64), ``reference`` (reference.py: the PyTorch formulas, block by block).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..dispatch import (HALF_DTYPES, REAL_DTYPES, Capabilities, Dispatcher, Request, grad_needed, register_op,
                        state_at_most)
from ..mamba_inner import MambaInnerWeights, State
from ..mamba_inner import available as cpu_available
from ..mamba_inner.cpu import MAX_STATE
from ..mamba_step import MambaStepWeights
from ..quantized import Matrix
from .cpu import cpu_stepper, mamba_lm_step_cpu, pack_weights
from .inputs import MambaLMStepInputs, MambaLMStepWeights, check_mamba_lm_step, check_state_count, fake_mamba_lm_step
from .reference import mamba_lm_step_reference


def _lm_probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(0)
    batch, vocab, d_model, d, n, rank, width, n_layers = 2, 5, 3, 4, 2, 1, 3, 2
    t = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    layers = tuple(MambaStepWeights(t(2 * d, d_model), t(2 * d), MambaInnerWeights(
        t(d, width), t(d), t(rank + 2 * n, d), t(d, rank), t(d), t(d, n) * 0.5, t(d)), t(d_model, d), None)
        for _ in range(n_layers))
    w = MambaLMStepWeights(t(vocab, d_model), tuple(t(d_model) for _ in range(n_layers)), layers, t(d_model),
                           t(vocab, d_model), 1e-5)
    state = [(t(batch, d, width - 1), t(batch, d, n)) for _ in range(n_layers)]
    return (MambaLMStepInputs(torch.tensor([1, 4], device=device), state, w),), {}


dispatch = Dispatcher("mamba_lm_step", mamba_lm_step_reference, _lm_probe_case, fake=fake_mamba_lm_step, rtol=1e-4, atol=1e-5)
dispatch.register("cpu", mamba_lm_step_cpu, ("cpu",), Capabilities(grad=False), available=cpu_available,
                  accepts=state_at_most(MAX_STATE), opaque=True)
dispatch.register("reference", mamba_lm_step_reference, ("cpu", "cuda"),
                  Capabilities(dtypes=REAL_DTYPES + HALF_DTYPES))


@register_op(dispatch)
def mamba_lm_step(token: Tensor, state: list[State], weights: MambaLMStepWeights, *,
                  backend: str | None = None) -> tuple[Tensor, list[State]]:
    """token (batch,) integer ids, state one (conv_state (batch, D, W-1), ssm_state (batch, D, N)) per
    block -> (logits (batch, vocab) of the next token, the next state). Shape checks only (per token they
    must cost nothing next to the step); the ids are range-checked by the C++ backend."""
    inputs = MambaLMStepInputs(token, state, weights)
    check_mamba_lm_step(inputs)
    return dispatch.choose(backend, _request(weights, state)).fn(inputs)


def _request(weights: MambaLMStepWeights, state: list[State] | None) -> Request:
    emb = weights.embedding
    return Request(emb.device, emb.dtype, initial_state=True, final_state=True,
                   grad=grad_needed(state, tuple(weights.norm_weights), tuple(map(tuple, weights.layers)),
                                    tuple(tuple(layer.inner) for layer in weights.layers), emb,
                                    weights.norm_f_weight, weights.lm_head_weight),
                   facts=(("d_state", max(layer.inner.A_log.shape[1] for layer in weights.layers)),))


def mamba_lm_stepper(weights: MambaLMStepWeights, *, backend: str | None = None, stored: Sequence[Matrix] | None = None
                     ) -> Callable[[Tensor, list[State]], tuple[Tensor, list[State]]]:
    """``step(token, state) -> (logits, next state)``, ``mamba_lm_step`` with the backend chosen and the weights
    prepared once (the C++ backend's packed matrices and argument lists): a decode loop's step, where choosing
    per call cost as much as a small model's whole token (about 0.17 ms). The weights are a snapshot: make a
    new stepper after changing them. With autograd recording, each call goes through ``mamba_lm_step``. ``stored``:
    the matrices' stored forms for the C++ backend's panels (``pack_weights``; a quantized model's)."""
    with torch.no_grad():  # the choice for calls without autograd: the only ones that use it
        chosen = dispatch.choose(backend, _request(weights, None))
    if chosen.name == "cpu":
        fast = cpu_stepper(pack_weights(weights, stored))
    else:
        fast = lambda token, state: chosen.fn(MambaLMStepInputs(token, state, weights))  # noqa: E731

    def step(token: Tensor, state: list[State]) -> tuple[Tensor, list[State]]:
        if torch.is_grad_enabled():  # the state may need gradients the C++ backend cannot give
            return mamba_lm_step(token, state, weights, backend=backend)
        check_state_count(state, weights)
        return fast(token, state)

    return step


__all__ = ["MambaLMStepInputs", "MambaLMStepWeights", "check_mamba_lm_step", "dispatch", "mamba_lm_step",
           "mamba_lm_step_cpu", "mamba_lm_step_reference", "mamba_lm_stepper", "pack_weights"]
