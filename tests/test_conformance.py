"""The layer contract of DESIGN.md, checked on every registered layer (and its bidirectional
variant where it has one). A new layer gets all of this by registering: behaviour (causality,
step == forward, continuation, gradients, dtypes, padding), and bad inputs (constructor arguments
derived from the signature's annotations, inputs, lengths, states derived from init_state, dtypes,
devices, meta tensors), each of which must give a ValueError naming the layer."""

from __future__ import annotations

import inspect
import math
import types
import typing

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


@pytest.mark.parametrize("variant", CAUSAL, ids=ids)
@pytest.mark.parametrize("grad", [False, True])
def test_final_state_is_forwards_state(variant, grad):
    layer = make(*variant)
    x = rand(2, 17)
    _, s1 = layer(x[:, :6], return_state=True)
    with torch.set_grad_enabled(grad):
        _, want = layer(x[:, 6:], state=s1, return_state=True)
        got = layer.final_state(x[:, 6:], s1)
        fresh_want, fresh = layer(x, return_state=True)[1], layer.final_state(x)
    for a, b in list(zip(_flat(got), _flat(want))) + list(zip(_flat(fresh), _flat(fresh_want))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    if grad:  # and it is differentiable: the state's gradient reaches the input
        xg = x.clone().requires_grad_()
        states = [torch.view_as_real(t) if t.is_complex() else t for t in _flat(layer.final_state(xg))]
        sum(t.sum() for t in states if t.is_floating_point()).backward()
        assert xg.grad is not None and xg.grad.abs().sum() > 0


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


# -- packed documents ---------------------------------------------------------------------------------
# Row 0 holds three documents, one of length 1; row 1 is one document spanning the whole row.
PACKED = [[5, 1, 17], [23]]


def _grads(layer, x):
    return [x.grad.clone()] + [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                               for p in layer.parameters()]


def _alone(layer, x, spans, weights, states=None):
    """Each document run alone (its own state from ``states`` if given): outputs, final states, and the
    gradients of sum(y * weights) over all documents."""
    layer.zero_grad()
    x = x.detach().clone().requires_grad_()
    outs, finals, loss = [], [], 0
    for k, s in enumerate(spans):
        piece = x[s.row:s.row + 1, s.start:s.stop]
        state = None if states is None else states[k]
        if layer.causal:
            y, final = layer(piece, state=state, return_state=True)
            finals.append(final)
        else:
            y = layer(piece)
        outs.append(y)
        loss = loss + (y * weights[s.row:s.row + 1, s.start:s.stop]).sum()
    loss.backward()
    return outs, finals, _grads(layer, x)


def _packed(layer, x, segments, weights, state=None, return_state=True):
    layer.zero_grad()
    x = x.detach().clone().requires_grad_()
    if layer.causal and (return_state or state is not None):
        y, final = layer(x, state=state, return_state=return_state, segments=segments), None
        if return_state:
            y, final = y
    else:
        y, final = layer(x, segments=segments), None
    (y * weights).sum().backward()
    return y, final, _grads(layer, x)


def _stack_states(states):
    return torch.utils._pytree.tree_map(lambda *t: torch.cat(t), *states) if len(states) > 1 else states[0]


def _state_grows(layer) -> bool:
    """Whether the layer's state changes shape with the length seen (HSA's chunk cache does)."""
    return _spec(layer(rand(1, 3), return_state=True)[1]) != _spec(layer(rand(1, 9), return_state=True)[1])


def _check_packed(layer, x, segments, states=None, tol=1e-8):
    """Packed == each document alone, with and without asking for the final states (layers may take another path
    for each)."""
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    outs, finals, want_grads = _alone(layer, x, segments.spans, weights, states)
    for return_state in ((False, True) if layer.causal else (False,)):
        y, final, got_grads = _packed(layer, x, segments, weights, None if states is None else _stack_states(states),
                                      return_state)
        for s, want in zip(segments.spans, outs):
            torch.testing.assert_close(y[s.row:s.row + 1, s.start:s.stop], want, rtol=tol, atol=tol)
        for got, want in zip(got_grads, want_grads):
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        if return_state:
            for k in range(segments.num_docs):
                for a, b in zip(_flat(final), _flat(finals[k])):
                    torch.testing.assert_close(a[k:k + 1], b, rtol=tol, atol=tol)


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_packed_equals_each_document_alone(variant):
    """Outputs, per-document final states and every gradient of a packed batch equal those of each document
    run alone: a document of length 1, one spanning a whole row, bidirectional layers in both directions."""
    layer = make(*variant).train()
    x = rand(2, 23)
    if layer.causal and _state_grows(layer):  # per-document states of unequal lengths cannot be batched
        with pytest.raises(ValueError, match="differ in shape"):
            layer(x, segments=ssmzoo.Segments.from_lengths(PACKED, 23), return_state=True)
        y = layer(x, segments=ssmzoo.Segments.from_lengths(PACKED, 23))
        for s in ssmzoo.Segments.from_lengths(PACKED, 23).spans:
            torch.testing.assert_close(y[s.row:s.row + 1, s.start:s.stop], layer(x[s.row:s.row + 1, s.start:s.stop]),
                                       rtol=1e-8, atol=1e-8)
        _check_packed(layer, rand(2, 12), ssmzoo.Segments.from_lengths([[6, 6], [6, 6]], 12))
    else:
        _check_packed(layer, x, ssmzoo.Segments.from_lengths(PACKED, 23))
    # Segments given as seq_idx or cu_seqlens are the same segments.
    a = ssmzoo.Segments.from_lengths(PACKED, 23)
    b = ssmzoo.Segments.from_seq_idx(a.doc * 3 + 1)
    c = ssmzoo.Segments.from_cu_seqlens(a.cu_seqlens, 2, 23)
    assert torch.equal(a.starts, b.starts) and torch.equal(a.starts, c.starts) and a.spans == b.spans == c.spans


@pytest.mark.parametrize("variant", CAUSAL, ids=ids)
def test_packed_with_initial_states(variant):
    """Per-document initial states enter their own documents: each document continues its own stream."""
    layer = make(*variant).train()
    lengths = [[6, 6], [6, 6]] if _state_grows(layer) else PACKED
    length = sum(lengths[0])
    segments = ssmzoo.Segments.from_lengths(lengths, length)
    with torch.no_grad():
        prefixes = rand(segments.num_docs, 4, seed=7)
        states = [layer(prefixes[k:k + 1], return_state=True)[1] for k in range(segments.num_docs)]
    _check_packed(layer, rand(2, length), segments, states)


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_packed_padding_is_a_document_of_its_own(variant):
    """Garbage padding packed as a last document changes no real token, forward or backward."""
    layer = make(*variant)
    x = rand(2, 16)
    segments = ssmzoo.Segments.from_lengths([[7, 4, 5], [10, 6]], 16)
    garbage = x.clone()
    garbage[0, 11:] = 1e3 * torch.randn(5, D_MODEL, dtype=x.dtype)
    garbage[1, 10:] = -1e3
    for inputs in (x, garbage):
        inputs.requires_grad_()
        y = layer(inputs, segments=segments)
        (y[0, :11].sum() + y[1, :10].sum()).backward()
    torch.testing.assert_close(layer(garbage, segments=segments)[0, :11], layer(x, segments=segments)[0, :11],
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(garbage.grad[0, :11], x.grad[0, :11], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(garbage.grad[1, :10], x.grad[1, :10], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_bad_segments(variant):
    layer = make(*variant)
    x = rand(2, 6)
    segments = ssmzoo.Segments.from_lengths([[2, 4], [6]], 6)
    cases = [
        (lambda: layer(x, segments=segments.doc), "segments"),
        (lambda: layer(x, segments=ssmzoo.Segments.from_lengths([[2, 3], [5]], 5)), "segments"),
        (lambda: layer(x[:1], segments=segments), "segments"),
        (lambda: layer(x, segments=segments, lengths=torch.tensor([6, 6])), "lengths or segments"),
    ]
    if layer.causal:
        cases += [(lambda: layer(x, segments=segments, state=layer.init_state(2)), "3 documents")]
    for call, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            call()
        assert layer.registry_name in str(info.value)
    assert layer.segments_fast_path == (type(layer)._forward_segments is not layers.SequenceLayer._forward_segments)


def test_segments_constructors_refuse_bad_input():
    S = ssmzoo.Segments
    cases = [
        (lambda: S.from_seq_idx(torch.tensor([[0, 1, 0]])), "non-decreasing"),
        (lambda: S.from_seq_idx(torch.tensor([[0.0, 1.0]])), "integer"),
        (lambda: S.from_seq_idx(torch.tensor([0, 1])), "shape"),
        (lambda: S.from_seq_idx([[0, 1]]), "seq_idx"),
        (lambda: S.from_seq_idx(torch.zeros(2, 3, dtype=torch.long, device="meta")), "meta"),
        (lambda: S.from_cu_seqlens(torch.tensor([0, 3, 3, 8]), 2, 4), "strictly increasing"),
        (lambda: S.from_cu_seqlens(torch.tensor([0, 5, 8]), 2, 4), "row start"),
        (lambda: S.from_cu_seqlens(torch.tensor([0, 4, 7]), 2, 4), "batch \\* length = 8"),
        (lambda: S.from_cu_seqlens(torch.tensor([1, 4, 8]), 2, 4), "from 0"),
        (lambda: S.from_cu_seqlens(torch.tensor([0, 4, 8], dtype=torch.float32), 2, 4), "integer"),
        (lambda: S.from_cu_seqlens(torch.tensor([0, 4, 8]), 0, 4), "batch"),
        (lambda: S.from_lengths([[2, 2], [3]], 4), "lengths\\[1\\]"),
        (lambda: S.from_lengths([[4, 0], [4]], 4), "lengths\\[0\\]"),
        (lambda: S.from_lengths([], 4), "lengths"),
        (lambda: S(torch.tensor([[False, True]])), "first token"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            call()
        assert "Segments" in str(info.value)
    s = S.from_lengths([[3, 1], [4]], 4)
    assert s.num_docs == 3 and s.doc.tolist() == [[0, 0, 0, 1], [2, 2, 2, 2]]
    assert s.positions.tolist() == [[0, 1, 2, 0], [0, 1, 2, 3]] and s.cu_seqlens.tolist() == [0, 3, 4, 8]


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
    with pytest.raises(ValueError, match="bidirectional"):
        layer.final_state(rand(2, 5))


@pytest.mark.parametrize("variant", BIDIRECTIONAL, ids=ids)
def test_bidirectional_sees_the_future(variant):
    layer = make(*variant)
    x = rand(2, 12)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert (layer(x2)[:, 0] - layer(x)[:, 0]).abs().max() > 1e-8


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64])
def test_the_finite_check_finds_one_bad_value_anywhere(dtype):
    from ssmzoo.layers.base import _all_finite

    x = torch.randn(3, 37, 5, dtype=dtype)
    assert _all_finite(x) and _all_finite(x.transpose(0, 2)) and _all_finite(x[:, :0])
    for bad in (math.nan, math.inf, -math.inf):
        for index in [(0, 0, 0), (2, 36, 4), (1, 17, 2)]:
            y = x.clone()
            y[index] = bad
            assert not _all_finite(y) and not _all_finite(y.transpose(0, 2)), (bad, index)
    if dtype == torch.float32:  # finite values whose sum would overflow are finite
        assert _all_finite(torch.full((1000,), 3e38))
    assert _all_finite(torch.arange(5))


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


# -- bad inputs ---------------------------------------------------------------------------------
def _bad_values(annotation) -> list:
    """Values a constructor argument of this annotation must reject (with a ValueError naming it)."""
    args = typing.get_args(annotation)
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = args if union else (annotation,)
    optional = type(None) in members
    bad: list = []
    for m in members:
        origin = typing.get_origin(m)
        if m is int:
            bad += [-1, 2.5, True]
        elif m is float:
            bad += [-1.0, math.nan, math.inf, "x", True]
        elif m is bool:
            bad += ["yes", 1]
        elif m is str:
            bad += ["no-such-name", 3]
        elif origin is typing.Literal:
            bad += ["no-such-choice"]
        elif origin is list:
            bad += [[], [-1], ["a"], "12", [1.5]]
    if not optional:
        bad.append(None)
    return bad


def _constructor_cases():
    for name in layers.available():
        for arg, p in inspect.signature(layers.get(name).__init__, eval_str=True).parameters.items():
            if arg != "self":
                for value in _bad_values(p.annotation):
                    yield name, arg, value


@pytest.mark.parametrize("name", layers.available())
def test_constructor_rejects_bad_values(name):
    cls = layers.get(name)
    cases = [(arg, value) for n, arg, value in _constructor_cases() if n == name]
    assert cases, f"{name}: no annotated constructor arguments to check"
    for arg, value in cases:
        args = dict(SMALL_ARGS.get(name, {}), d_model=D_MODEL)
        args[arg] = value
        with pytest.raises(ValueError) as info:
            layers.build(name, **args)
        message = str(info.value)
        assert arg in message, f"{name}({arg}={value!r}): the error does not name {arg}: {message}"
        assert cls.__name__ in message or name in message, f"{name}({arg}={value!r}): unnamed layer: {message}"


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_more_bad_inputs(variant):
    layer = make(*variant)
    x = rand(2, 5)
    cases = [
        (lambda: layer(x.tolist()), "torch.Tensor"),
        (lambda: layer(x.to(torch.complex128)), "dtype"),
        (lambda: layer(x.to("meta")), "meta"),  # x on another device than the parameters
        (lambda: layer(x, lengths=torch.tensor([5.0, 3.0])), "integer"),
        (lambda: layer(x, lengths=torch.tensor([[5, 3]])), "lengths"),
        (lambda: layer(x, lengths=[5, 3]), "lengths"),
        (lambda: layer(x, lengths=torch.tensor([5, 0])), "lengths"),
        (lambda: layer(x, lengths=torch.tensor([5, 3], device="meta")), "lengths"),
        (lambda: layer(x, return_state="yes"), "return_state"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            call()
        assert layer.registry_name in str(info.value)


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_input_dtype_must_match_the_parameters(variant, dtype):
    """A float32 layer given another float dtype says to convert (never fails inside a matmul)."""
    layer = make(*variant, dtype=torch.float32)
    x = rand(2, 5, dtype=dtype)
    match = r"\.to\(" if dtype in layer.supported_dtypes else "dtype"
    with pytest.raises(ValueError, match=match):
        layer(x)
    if layer.causal:
        with pytest.raises(ValueError, match=match):
            layer.step(x[:, 0], layer.init_state(2))


def _replace_leaf(state, index: int, new):
    leaves, spec = torch.utils._pytree.tree_flatten(state)
    leaves[index] = new
    return torch.utils._pytree.tree_unflatten(leaves, spec)


def _bad_states(layer) -> list[tuple[str, object]]:
    """States that are not like init_state(2): each leaf in a wrong dtype, shape, batch and device,
    wrong structures, and the state of every other registered layer whose form differs."""
    good = layer.init_state(2)
    leaves, _ = torch.utils._pytree.tree_flatten(good)
    cases: list[tuple[str, object]] = []
    for i, leaf in enumerate(leaves):
        if leaf.is_complex():  # e.g. S4D's complex state passed as real
            wrong = [leaf.real, torch.view_as_real(leaf)]
        elif leaf.is_floating_point():
            wrong = [leaf.to(torch.float32 if leaf.dtype == torch.float64 else torch.float64), leaf.long()]
        else:
            wrong = [leaf.double()]
        wrong += [torch.zeros(*leaf.shape[:-1], leaf.shape[-1] + 1, dtype=leaf.dtype), leaf[:1], leaf.to("meta")]
        cases += [(f"leaf {i}: {w.dtype} {tuple(w.shape)} on {w.device}", _replace_leaf(good, i, w)) for w in wrong]
    cases += [("None inside", _replace_leaf(good, 0, None)) if len(leaves) > 1 else ("tensor", torch.zeros(2))]
    cases += [("empty list", []), ("empty tuple", ()), ("a float", 3.0), ("a string", "state"), ("a dict", {})]
    cases += [("a list", list(good)) if isinstance(good, tuple) else ("wrapped in a tuple", (good,))]
    spec = _spec(good)
    for other in layers.available():
        other_layer = layers.build(other, **dict(SMALL_ARGS.get(other, {}), d_model=D_MODEL)).double()
        if other_layer.causal and _spec(other_layer.init_state(2)) != spec:
            cases.append((f"the state of {other}", other_layer.init_state(2)))
    return cases


def _spec(state):
    leaves, tree = torch.utils._pytree.tree_flatten(state)
    return str(tree), [(t.dtype, tuple(t.shape)) for t in leaves]


@pytest.mark.parametrize("variant", CAUSAL, ids=ids)
def test_bad_states(variant):
    layer = make(*variant)
    x = rand(2, 5)
    for what, state in _bad_states(layer):
        for whole_sequence in (True, False):
            with pytest.raises(ValueError, match="init_state") as info:
                if whole_sequence:
                    layer(x, state=state)
                else:
                    layer.step(x[:, 0], state)
            assert layer.registry_name in str(info.value), what
    with pytest.raises(ValueError, match="init_state"):
        layer.step(x[:, 0], None)
    # the good state still works, from init_state and from forward
    _, state = layer(x, state=layer.init_state(2), return_state=True)
    layer.step(x[:, 0], state)


@pytest.mark.parametrize("variant", CAUSAL, ids=ids)
def test_init_state_bad_arguments(variant):
    layer = make(*variant)
    for kwargs, match in [(dict(batch_size=0), "batch_size"), (dict(batch_size=-1), "batch_size"),
                          (dict(batch_size=2.0), "batch_size"), (dict(batch_size=True), "batch_size"),
                          (dict(batch_size=2, dtype=torch.int64), "dtype"), (dict(batch_size=2, dtype="float"), "dtype"),
                          (dict(batch_size=2, device="no-such-device"), "device")]:
        with pytest.raises(ValueError, match=match):
            layer.init_state(**kwargs)


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_meta_tensors(variant):
    """Meta tensors pass the shape checks without the value scan (which would need their data) and
    run through, giving outputs of the right shape."""
    layer = make(*variant).to("meta")
    with pytest.raises(ValueError, match="d_model"):
        layer(torch.empty(2, 5, D_MODEL + 1, device="meta", dtype=torch.float64))
    x = torch.empty(2, 5, D_MODEL, device="meta", dtype=torch.float64)
    y = layer(x)  # every op dispatches meta tensors to its reference, which infers the shapes
    assert y.device.type == "meta" and y.shape == x.shape
    if layer.causal:
        state = layer.init_state(2)
        assert all(t.device.type == "meta" for t in _flat(state))


@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_forward_writes_no_parameter_or_buffer(variant):
    """No layer changes its parameters or buffers in forward (DDP replicas fed different lengths
    would drift apart): lengths 1 and 40 with a backward pass, and 1100 (past S4's default l_max),
    in training mode."""
    layer = make(*variant).train()
    before = {k: v.detach().clone() for k, v in [*layer.named_parameters(), *layer.named_buffers()]}
    for length in (1, 40):
        y = layer(rand(1, length))
        if y.requires_grad:
            y.sum().backward()
    with torch.no_grad():
        layer(rand(1, 1100))
    for k, v in [*layer.named_parameters(), *layer.named_buffers()]:
        assert torch.equal(v.detach(), before[k]), f"{k} changed in forward"


def test_value_check_rule():
    """The NaN/inf scan and the lengths range read data (a sync on GPU): on CPU by default, never on
    CUDA or meta unless turned on; on or off everywhere on request."""
    assert layers.input_checks_enabled("cpu") and not layers.input_checks_enabled("cuda")
    assert not layers.input_checks_enabled("meta")
    with layers.input_checks(True):
        assert layers.input_checks_enabled("cuda") and not layers.input_checks_enabled("meta")
    with layers.input_checks(False):
        assert not layers.input_checks_enabled("cpu")
    assert layers.input_checks_enabled("cpu") and not layers.input_checks_enabled("cuda")
    with pytest.raises(ValueError, match="enabled"):
        layers.set_input_checks("yes")


def _flat(state):
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        state = list(state.values())
    return [t for s in state for t in _flat(s)]
