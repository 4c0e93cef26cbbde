"""One token of a whole Mamba-2 language model: ``mamba2_lm_step(token, state, weights)`` -> (logits, next state).

Generation spends its decode loop here: embedding, every block's RMSNorm + Mamba-2 step + residual, the final
RMSNorm and the head, the matrices float, bfloat16 or int8 (``ssmzoo.ops.quantized``). Backends, in ``auto``'s
preference order: ``cpu`` (cpu.py: the whole token in one C++ call, no gradient, CPU float32/float64),
``reference`` (reference.py: the PyTorch formulas, block by block).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..dispatch import HALF_DTYPES, REAL_DTYPES, Capabilities, Dispatcher, Request, grad_needed, register_op
from ..quantized import Int8Matrix, Matrix, quantize_int8
from .cpu import available as cpu_available
from .cpu import cpu_stepper, mamba2_lm_step_cpu
from .inputs import (Mamba2BlockWeights, Mamba2LMStepInputs, Mamba2LMStepWeights, State, check_mamba2_lm_step,
                     check_state_count, fake_mamba2_lm_step)
from .reference import mamba2_lm_step_reference


def _probe_case(device: torch.device, caps: Capabilities) -> tuple[tuple, dict]:
    """Two blocks that differ in every setting the kernel branches on: groups, D per head or per channel, the
    norm's order and groups, dt_limit, biases; one int8 and one bfloat16 matrix."""
    g = torch.Generator().manual_seed(0)
    batch, vocab, d_model, heads, p, n, width = 2, 7, 6, 4, 3, 2, 3
    t = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    d_inner = heads * p
    layers = []
    for ngroups, d_per_channel, before, limit in ((2, True, False, (0.0, float("inf"))), (1, False, True, (0.05, 1.5))):
        conv_dim = d_inner + 2 * ngroups * n
        layers.append(Mamba2BlockWeights(
            t(d_inner + conv_dim + heads, d_model), t(d_inner + conv_dim + heads), t(conv_dim, width), t(conv_dim),
            t(heads), t(heads) * 0.5, t(d_inner if d_per_channel else heads), 1 + 0.1 * t(d_inner), t(d_model, d_inner),
            None, ngroups, d_inner // ngroups, before, 1e-5, limit))
    layers[0] = layers[0]._replace(in_proj_weight=quantize_int8(layers[0].in_proj_weight.cpu()))
    layers[1] = layers[1]._replace(out_proj_weight=layers[1].out_proj_weight.to(torch.bfloat16), norm_weight=None)
    w = Mamba2LMStepWeights(t(vocab, d_model), tuple(t(d_model) for _ in layers), tuple(layers), t(d_model),
                            t(vocab, d_model), 1e-5)
    state = [(t(batch, l.conv_weight.shape[0], width - 1), t(batch, heads, p, n)) for l in layers]
    return (Mamba2LMStepInputs(torch.tensor([1, 6], device=device), state, w),), {}


dispatch = Dispatcher("mamba2_lm_step", mamba2_lm_step_reference, _probe_case, fake=fake_mamba2_lm_step,
                      rtol=1e-4, atol=1e-5)
dispatch.register("cpu", mamba2_lm_step_cpu, ("cpu",), Capabilities(grad=False), available=cpu_available,
                  opaque=True)
dispatch.register("reference", mamba2_lm_step_reference, ("cpu", "cuda"), Capabilities(dtypes=REAL_DTYPES + HALF_DTYPES))


@register_op(dispatch)
def mamba2_lm_step(token: Tensor, state: list[State], weights: Mamba2LMStepWeights, *,
                   backend: str | None = None) -> tuple[Tensor, list[State]]:
    """token (batch,) integer ids, state one (conv_state (batch, conv_dim, W-1), ssm_state (batch, heads,
    headdim, d_state)) per block -> (logits (batch, vocab) of the next token, the next state). Shape checks only;
    the ids are range-checked by the C++ backend."""
    inputs = Mamba2LMStepInputs(token, state, weights)
    check_mamba2_lm_step(inputs)
    return dispatch.choose(backend, _request(weights, state)).fn(inputs)


def _tensors(m: Matrix) -> tuple[Tensor, ...]:
    return tuple(m) if isinstance(m, Int8Matrix) else (m,)


def _request(weights: Mamba2LMStepWeights, state: list[State] | None) -> Request:
    emb = weights.embedding
    layer_tensors = tuple(t for l in weights.layers for f in l if isinstance(f, (Tensor, Int8Matrix))
                          for t in _tensors(f))
    return Request(emb.device, emb.dtype, initial_state=True, final_state=True,
                   grad=grad_needed(state, tuple(weights.norm_weights), layer_tensors, emb, weights.norm_f_weight,
                                    _tensors(weights.head_weight)))


def mamba2_lm_stepper(weights: Mamba2LMStepWeights, *, backend: str | None = None
                      ) -> Callable[[Tensor, list[State]], tuple[Tensor, list[State]]]:
    """``step(token, state) -> (logits, next state)``: ``mamba2_lm_step`` with the backend chosen and the weights
    packed once (a decode loop's step). The weights are a snapshot: make a new stepper after changing them. With
    autograd recording, each call goes through ``mamba2_lm_step``."""
    with torch.no_grad():
        chosen = dispatch.choose(backend, _request(weights, None))
    if chosen.name == "cpu":
        fast = cpu_stepper(weights)
    else:
        fast = lambda token, state: chosen.fn(Mamba2LMStepInputs(token, state, weights))  # noqa: E731

    def step(token: Tensor, state: list[State]) -> tuple[Tensor, list[State]]:
        if torch.is_grad_enabled():
            return mamba2_lm_step(token, state, weights, backend=backend)
        check_state_count(state, weights)
        return fast(token, state)

    return step


__all__ = ["Mamba2BlockWeights", "Mamba2LMStepInputs", "Mamba2LMStepWeights", "check_mamba2_lm_step", "dispatch",
           "mamba2_lm_step", "mamba2_lm_step_cpu", "mamba2_lm_step_reference", "mamba2_lm_stepper"]
