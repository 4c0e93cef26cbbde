"""Every registered layer under autocast (bfloat16 and float16, on CPU): float32 parameters, inputs and
outputs in lower precision wherever autocast puts them. Lightning's ``--trainer.precision bf16-mixed`` and
``16-mixed`` run a model exactly this way, so this is the test that a mixed-precision run of any layer works.

For each layer (and its bidirectional variant) under each autocast dtype: forward and backward run, the output
and every gradient are finite and close to the float32 result, and for causal layers the state carried through
``forward`` and ``step`` under autocast agrees with one ``forward``. Layers are enumerated from
``ssmzoo.layers.available()``, so a new layer is tested by registering.

Tolerances: inputs and weights are O(1), and bfloat16 keeps 8 bits of mantissa (relative rounding 2^-8 ≈ 0.004
per value); a layer's few matmuls and its scan accumulate in float32, so its output stays within a few percent of
the float32 one. The bound 0.1 (absolute and relative) is test_conformance.py's for half-precision parameters,
which pass through the same roundings; a layer that dropped a term or computed in the wrong order would be off
by O(1).
"""

from __future__ import annotations

import inspect

import pytest
import torch

from ssmzoo import layers

from conformance_args import D_MODEL, SMALL_ARGS

AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]
TOL = dict(rtol=0.1, atol=0.1)

VARIANTS = []
for _name in layers.available():
    VARIANTS.append((_name, False))
    if "bidirectional" in inspect.signature(layers.get(_name).__init__).parameters:
        VARIANTS.append((_name, True))
CAUSAL = [v for v in VARIANTS if not v[1]]


def ids(v):
    return f"{v[0]}-{'bi' if v[1] else 'causal'}"


def make(name: str, bidirectional: bool, seed: int = 0):
    torch.manual_seed(seed)
    args = dict(SMALL_ARGS.get(name, {}), d_model=D_MODEL)
    if bidirectional:
        args["bidirectional"] = True
    layer = layers.build(name, **args).float()
    if not bidirectional and not layer.causal:
        pytest.skip(f"{name} is not causal in its default configuration")
    return layer


def rand(b: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, length, D_MODEL, generator=torch.Generator().manual_seed(seed))


def flat(state):
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in flat(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in flat(v)]
    return []


def test_every_layer_is_here():
    assert {v[0] for v in VARIANTS} == set(layers.available())
    assert {"mamba2", "hsa", "neural_memory"} <= {v[0] for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=str)
def test_forward_and_backward_under_autocast(variant, dtype):
    layer = make(*variant).train()
    x = rand(2, 13)
    weights = torch.randn(2, 13, D_MODEL, generator=torch.Generator().manual_seed(2))

    x32 = x.clone().requires_grad_()
    (layer(x32) * weights).sum().backward()
    want = {name: p.grad.clone() for name, p in layer.named_parameters()}
    layer.zero_grad(set_to_none=True)

    xa = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        y = layer(xa)
        loss = (y.float() * weights).sum()
    loss.backward()
    assert y.shape == x.shape and y.dtype in (dtype, torch.float32)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), layer(x).detach(), **TOL)
    assert xa.grad is not None and torch.isfinite(xa.grad).all()
    torch.testing.assert_close(xa.grad, x32.grad, **TOL)
    for name, p in layer.named_parameters():
        assert p.dtype == torch.float32, f"autocast changed the parameter {name} to {p.dtype}"
        assert p.grad is not None, f"no gradient reaches {name} under autocast"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name} under autocast"
        scale = want[name].abs().max().clamp(min=1.0)  # gradients of sums over many terms: relative to their size
        torch.testing.assert_close(p.grad / scale, want[name] / scale, **TOL, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("variant", CAUSAL, ids=ids)
@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=str)
def test_streaming_under_autocast(variant, dtype):
    """Inference as ``generate`` runs it under autocast: a prefix through ``forward`` (its state out), the rest
    token by token through ``step``; together they agree with one ``forward`` of the whole sequence."""
    layer = make(*variant).eval()
    x = rand(2, 12)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        whole = layer(x)
        head, state = layer(x[:, :5], return_state=True)
        steps = []
        for t in range(5, x.shape[1]):
            y_t, state = layer.step(x[:, t], state)
            assert y_t.shape == (2, D_MODEL)
            steps.append(y_t.float())
    got = torch.cat([head.float(), torch.stack(steps, 1)], 1)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, whole.float(), **TOL)
    with torch.no_grad():
        torch.testing.assert_close(got, layer(x), **TOL)  # and the float32 result
    assert all(torch.isfinite(t).all() for t in flat(state) if t.is_floating_point())
