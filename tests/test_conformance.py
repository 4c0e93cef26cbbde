"""The layer contract of DESIGN.md, checked on every registered layer (and its bidirectional
variant where it has one). A new layer gets all of this by registering."""

from __future__ import annotations

import inspect

import pytest
import torch

import ssmzoo
from ssmzoo import layers
from ssmzoo.modules import reverse_padded

from conformance_args import D_MODEL, SMALL_ARGS

# (name, bidirectional) pairs
VARIANTS = []
for _name in layers.available():
    VARIANTS.append((_name, False))
    if "bidirectional" in inspect.signature(layers.get(_name).__init__).parameters:
        VARIANTS.append((_name, True))
CAUSAL = [v for v in VARIANTS if not v[1]]
BIDIRECTIONAL = [v for v in VARIANTS if v[1]]


def make(name: str, bidirectional: bool, dtype=torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    args = dict(SMALL_ARGS.get(name, {}), d_model=D_MODEL)
    if bidirectional:
        args["bidirectional"] = True
    layer = layers.build(name, **args).to(dtype).eval()
    if not bidirectional and not layer.causal:
        pytest.skip(f"{name} is not causal in its default configuration")
    return layer


def rand(b, length, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, length, D_MODEL, generator=g, dtype=dtype)


def ids(v):
    return f"{v[0]}-{'bi' if v[1] else 'causal'}"


def test_every_layer_is_exported():
    for name in layers.available():
        cls = layers.get(name)
        assert getattr(ssmzoo, cls.__name__) is cls, f"{cls.__name__} is not importable from ssmzoo"


@pytest.mark.parametrize("variant", CAUSAL, ids=ids)
def test_causal(variant):
    layer = make(*variant)
    x = rand(2, 23)
    y = layer(x)
    t0 = 11
    x2 = x.clone()
    x2[:, t0:] += torch.randn_like(x2[:, t0:])
    y2 = layer(x2)
    torch.testing.assert_close(y2[:, :t0], y[:, :t0], rtol=0, atol=1e-10)
    assert (y2[:, t0] - y[:, t0]).abs().max() > 1e-6, "the output ignores the current input"


@pytest.mark.parametrize("variant", CAUSAL, ids=ids)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_step_matches_forward(variant, dtype, tol):
    layer = make(*variant, dtype=dtype)
    x = rand(3, 40, dtype)
    y, final = layer(x, return_state=True)
    state = layer.init_state(3)
    outs = []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        assert y_t.shape == (3, D_MODEL) and y_t.dtype == dtype
        outs.append(y_t)
    torch.testing.assert_close(torch.stack(outs, 1), y, rtol=tol, atol=tol)
    for a, b in zip(_flat(state), _flat(final)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("variant", CAUSAL, ids=ids)
@pytest.mark.parametrize("split", [1, 13, 39])
def test_chunked_continuation(variant, split):
    layer = make(*variant)
    x = rand(2, 40)
    y, final = layer(x, return_state=True)
    y1, s1 = layer(x[:, :split], return_state=True)
    y2, s2 = layer(x[:, split:], state=s1, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-8, atol=1e-8)
    for a, b in zip(_flat(s2), _flat(final)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
    # a fresh state is the same as no state
    y0 = layer(x, state=layer.init_state(2))
    torch.testing.assert_close(y0, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_gradients_reach_every_parameter(variant):
    layer = make(*variant).train()
    x = rand(2, 17).requires_grad_()
    y = layer(x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient for {name}"


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(variant, dtype):
    layer = make(*variant, dtype=torch.float32)
    x = rand(2, 9, torch.float32)
    if dtype not in layer.supported_dtypes:
        with pytest.raises(ValueError, match="dtype"):
            layer(x.to(dtype))
        return
    y = layer.to(dtype)(x.to(dtype))
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.isfinite(y).all()
    if dtype in (torch.float16, torch.bfloat16):
        ref = layer.float()(x)
        torch.testing.assert_close(y.float(), ref, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_padding_never_changes_real_tokens(variant):
    layer = make(*variant)
    lengths = torch.tensor([17, 9, 1])
    x = rand(3, 17)
    padded = x.clone()
    for i, n in enumerate(lengths):
        padded[i, n:] = 1e3 * torch.randn_like(padded[i, n:])  # garbage in the padding
    y = layer(padded, lengths=lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = layer(x[i : i + 1, :n])
        torch.testing.assert_close(y[i : i + 1, :n], alone, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("variant", BIDIRECTIONAL, ids=ids)
def test_bidirectional_cannot_stream(variant):
    layer = make(*variant)
    assert not layer.causal
    with pytest.raises(ValueError, match="bidirectional"):
        layer.init_state(2)
    with pytest.raises(ValueError, match="bidirectional"):
        layer.step(rand(2, 1)[:, 0], None)
    with pytest.raises(ValueError, match="bidirectional"):
        layer(rand(2, 5), return_state=True)


@pytest.mark.parametrize("variant", BIDIRECTIONAL, ids=ids)
def test_bidirectional_sees_the_future(variant):
    layer = make(*variant)
    x = rand(2, 12)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert (layer(x2)[:, 0] - layer(x)[:, 0]).abs().max() > 1e-8


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_bad_inputs(variant):
    layer = make(*variant)
    name = layer.registry_name
    cases = [
        (torch.randn(4, D_MODEL, dtype=torch.float64), "rank"),
        (torch.randn(2, 5, D_MODEL + 1, dtype=torch.float64), "d_model"),
        (torch.randn(2, 0, D_MODEL, dtype=torch.float64), "length"),
        (torch.full((2, 5, D_MODEL), float("nan"), dtype=torch.float64), "NaN"),
        (torch.randint(0, 3, (2, 5, D_MODEL)), "dtype"),
    ]
    for x, what in cases:
        with pytest.raises(ValueError, match=what) as info:
            layer(x)
        assert name in str(info.value) and "x" in str(info.value)
    with layers.input_checks(False):  # the NaN scan can be switched off for speed
        layer(torch.full((1, 3, D_MODEL), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="lengths"):
        layer(rand(2, 5), lengths=torch.tensor([6, 1]))
    if layer.causal:
        with pytest.raises(ValueError, match="batch size"):
            layer(rand(2, 5), state=layer.init_state(3))
        with pytest.raises(ValueError, match="d_model"):
            layer.step(torch.randn(2, D_MODEL + 1, dtype=torch.float64), layer.init_state(2))


def test_reverse_padded():
    x = torch.arange(10.0).view(2, 5, 1)
    r = reverse_padded(x, torch.tensor([5, 3]))
    assert r[0, :, 0].tolist() == [4, 3, 2, 1, 0]
    assert r[1, :, 0].tolist() == [7, 6, 5, 8, 9]
    torch.testing.assert_close(reverse_padded(r, torch.tensor([5, 3])), x)


def _flat(state):
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        state = list(state.values())
    return [t for s in state for t in _flat(s)]
