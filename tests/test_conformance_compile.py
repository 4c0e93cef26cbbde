"""torch.compile on every registered layer (and its bidirectional variant), part of the layer contract: with
``fullgraph=True`` (no graph break: the ops' kernels are custom operators, the dispatcher's choice a constant) the
compiled layer's outputs, final states and gradients equal eager ones, with and without a state, with packed
documents where the layer has a fast path; a new length does not recompile (dynamic length).

The default suite compiles with ``aot_eager`` (Dynamo and AOT autograd: the graph capture, the custom operators'
fake and autograd formulas and the functionalised backward, without code generation, which is slow on 2 cores);
the ``slow`` cases compile with Inductor."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import ssmzoo
from ssmzoo import layers
from conformance_args import D_MODEL, SMALL_ARGS
from test_conformance import BIDIRECTIONAL, CAUSAL, VARIANTS, _flat, ids, make, rand


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # each layer is a new module: keep dynamo's caches small and the counts below exact
    yield
    torch._dynamo.reset()


def _grads(outputs, inputs, seed=3):
    g = torch.Generator().manual_seed(seed)
    flat = [torch.view_as_real(t) if t.is_complex() else t for t in outputs if t.is_floating_point() or t.is_complex()]
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in flat)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def _compare(layer, run, args, backend, tol):
    """``run(module, *args)`` eager vs compiled (fullgraph): outputs and gradients of every input and parameter."""
    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    tensors = [a for a in args if not isinstance(a, ssmzoo.Segments)]
    inputs = [a for a in _flat(tensors) if a.requires_grad] + [p for p in layer.parameters() if p.requires_grad]
    want = _flat(run(layer, *args))
    got = _flat(run(compiled, *args))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    for a, b in zip(_grads(got, inputs), _grads(want, inputs)):
        if b is None:
            assert a is None or a.abs().max() == 0
        else:
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _with_state(layer, x, state):
    return layer(x, state=state, return_state=True)


def _prefix_state(layer, batch):
    with torch.no_grad():
        _, state = layer(rand(batch, 5, seed=2), return_state=True)
    return state


# The default suite compiles every causal layer (about 20 s each on a busy 2-core machine); the bidirectional variants
# and the exhaustive cases below are slow.
SLOW_VARIANTS = [pytest.param(v, marks=pytest.mark.slow) if v in BIDIRECTIONAL else v for v in VARIANTS]


@pytest.mark.parametrize("variant", SLOW_VARIANTS, ids=ids)
def test_compile_fullgraph_equals_eager(variant):
    """Forward and backward; causal layers with a state in and the final state out."""
    layer = make(*variant).train()
    x = rand(2, 11).requires_grad_()
    if variant in CAUSAL and layer.compiles_with_state:
        _compare(layer, _with_state, (x, _prefix_state(layer, 2)), "aot_eager", 1e-8)
    elif variant in CAUSAL:  # a fresh stream compiles; a continuation says why it cannot
        _compare(layer, lambda m, x: m(x, return_state=True), (x,), "aot_eager", 1e-8)
        with pytest.raises(Exception, match="cannot be compiled with fullgraph=True"):
            torch.compile(layer, backend="aot_eager", fullgraph=True)(x, state=_prefix_state(layer, 2))
    else:
        _compare(layer, lambda m, x: m(x), (x,), "aot_eager", 1e-8)


def _packed(layer, x, segments):
    return layer(x, segments=segments)


# MAG's sliding-window branch keeps its state, so it runs packed documents one at a time: a clear error when compiled.
PER_DOCUMENT_INSIDE = {"memory_as_gate"}


def _one_pass(variant) -> bool:
    """Whether the layer as the conformance suite builds it has a one-pass form for packed documents (a Parallel's
    depends on its layers: before, the class attribute, False, left it out of the packed compile case)."""
    name, bidirectional = variant
    args = dict(SMALL_ARGS.get(name, {}), d_model=D_MODEL, **({"bidirectional": True} if bidirectional else {}))
    with torch.random.fork_rng():
        return layers.build(name, **args).segments_fast_path


FAST_PATHS = [v for v in VARIANTS if _one_pass(v)]


@pytest.mark.parametrize("variant", [v if v == ("mamba", False) else pytest.param(v, marks=pytest.mark.slow)
                                     for v in FAST_PATHS], ids=ids)
def test_compile_packed_documents(variant):
    """Packed documents (training's form: no states) through the layer's fast path: one pass, every document
    alone. Short rows: attention-like layers take their one-pass form up to their block or window."""
    layer = make(*variant).train()
    segments = ssmzoo.Segments.from_lengths([[1, 3, 1], [5]], 5)
    if variant[0] in PER_DOCUMENT_INSIDE:
        with pytest.raises(Exception, match="cannot be compiled with fullgraph=True"):
            torch.compile(layer, backend="aot_eager", fullgraph=True)(rand(2, 5), segments=segments)
        return
    _compare(layer, _packed, (rand(2, 5).requires_grad_(), segments), "aot_eager", 1e-8)


PER_DOCUMENT = [v for v in VARIANTS if not v[1] and not _one_pass(v)]


@pytest.mark.parametrize("variant", [v if v == ("s4", False) else pytest.param(v, marks=pytest.mark.slow)
                                     for v in PER_DOCUMENT], ids=ids)
def test_packed_documents_without_a_one_pass_form_say_so_when_compiled(variant):
    layer = make(*variant)
    assert not layer.segments_fast_path
    segments = ssmzoo.Segments.from_lengths([[1, 6, 4], [11]], 11)
    with pytest.raises(Exception, match="cannot be compiled with fullgraph=True"):
        torch.compile(layer, backend="eager", fullgraph=True)(rand(2, 11), segments=segments)
    # without fullgraph that part runs eagerly, exactly
    x = rand(2, 11)
    torch.testing.assert_close(torch.compile(layer, backend="eager")(x, segments=segments), layer(x, segments=segments))


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_compile_inductor_equals_eager(variant):
    layer = make(*variant).train()
    x = rand(2, 11).requires_grad_()
    if variant in CAUSAL and layer.compiles_with_state:
        _compare(layer, _with_state, (x, _prefix_state(layer, 2)), "inductor", 1e-7)
    else:
        _compare(layer, lambda m, x: m(x), (x,), "inductor", 1e-7)


def _count_compiles(layer, lengths):
    counter = CompileCounter()  # a backend that counts the graphs it is given and runs them as they are
    # One eager call first: einops registers its torch backend on first use, and a guard on its registry would
    # count as a recompile (before, gated_deltanet and mamba2 compiled twice in a fresh process for that reason).
    layer(rand(2, lengths[0]))
    compiled = torch.compile(layer, backend=counter, fullgraph=True, dynamic=None)
    for n in lengths:
        x = rand(2, n)
        torch._dynamo.mark_dynamic(x, 1)
        torch.testing.assert_close(compiled(x), layer(x), rtol=1e-8, atol=1e-8)
    return counter.frame_count


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS, ids=ids)
def test_new_length_does_not_recompile(variant):
    layer = make(*variant)
    assert _count_compiles(layer, [9, 13, 21]) == 1


@pytest.mark.parametrize("name, lengths", [("mamba", [9, 13, 21]), ("s4d", [9, 40, 77]), ("companion", [9, 13, 21]),
                                           ("neural_memory", [9, 13, 21])])
def test_new_length_does_not_recompile_quick(name, lengths):
    """S4D: before, the Vandermonde kernel's block size ⌈√L⌉ (math.isqrt of the symbolic length) broke the graph;
    traced, it takes one block size for every length (lengths across several blocks of it here). Companion (and
    shift): A^L took L as a Python int. Neural memory (and Titans MAC, MAG): its loop over chunks was unrolled."""
    layer = make(name, False)
    assert _count_compiles(layer, lengths) == 1
