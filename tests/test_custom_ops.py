"""Opaque backends (C++, CUDA, Triton, peer libraries) are PyTorch custom operators (ops/custom.py): each passes
torch.library.opcheck (schema, fake implementation, autograd registration, AOT dispatch with dynamic shapes) on its
op's probe case, and a compiled graph calls the operator as one node, with the eager values and gradients."""

from __future__ import annotations

import pytest
import torch

import ssmzoo.ops
from ssmzoo.ops.custom import CUSTOM_OPS, OpaqueBackend, decode, encode
from ssmzoo.ops.dispatch import Capabilities, Dispatcher
from ssmzoo.ops.segments import Segments

# Backends by these names run code PyTorch cannot trace, so they must be custom operators.
OPAQUE_NAMES = {"cpu", "cuda", "triton", "mamba_ssm", "keops", "causal_conv1d"}

OPS = ssmzoo.ops.index()
OPAQUE = [(op, name) for op, d in OPS.items() for name, b in d.backends.items() if isinstance(b.fn, OpaqueBackend)]


def test_every_kernel_backend_is_a_custom_op():
    for op, d in OPS.items():
        for name, b in d.backends.items():
            if name in OPAQUE_NAMES:
                assert isinstance(b.fn, OpaqueBackend), f"{op}: backend {name!r} is not registered with opaque=True"
                assert b.fn.qualname in CUSTOM_OPS and b.fn.qualname == f"ssmzoo::{op}_{name}"


@pytest.mark.parametrize("op,name", [v for v in OPAQUE if "cpu" in OPS[v[0]].backends[v[1]].devices],
                         ids=lambda v: str(v))
def test_opcheck(op, name):
    d = OPS[op]
    b = d.backends[name]
    if not d.usable(name, "cpu"):
        pytest.skip(f"{op}: backend {name!r} is not available here")
    args, kwargs = d.probe_case(torch.device("cpu"), b.capabilities)
    if not b.capabilities.grad:  # a backend without backward (a decode step) has no autograd formula
        args, kwargs = torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.detach(), (args, kwargs))
    tensors: list = []
    spec = encode((args, kwargs), tensors)
    # the operator's value is the backend's, through the spec's round trip
    want = b.fn.fn(*args, **kwargs)
    got = b.fn.op(tensors, spec)
    flat_want = [t for t in torch.utils._pytree.tree_leaves(want) if isinstance(t, torch.Tensor)]
    assert len(got) == len(flat_want)
    for g, w in zip(got, flat_want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    torch.library.opcheck(b.fn.op, (tensors, spec))
    if b.capabilities.grad:  # the registered gradient is the backend's own, exactly
        leaves = [t for t in tensors if t is not None and t.requires_grad]
        g = torch.Generator().manual_seed(0)
        weights = [torch.randn(w.shape, generator=g, dtype=w.dtype) for w in flat_want]

        def loss(outs):
            return sum((w * o).sum().real for w, o in zip(weights, outs))

        want_grads = torch.autograd.grad(loss(flat_want), leaves, allow_unused=True)
        got_grads = torch.autograd.grad(loss(b.fn.op(tensors, spec)), leaves, allow_unused=True)
        for a, w in zip(got_grads, want_grads):
            if w is None:
                assert a is None or not a.any()
            else:
                torch.testing.assert_close(a, w, rtol=0, atol=0)


def test_spec_round_trip():
    import math

    seg = Segments.from_lengths([[2, 3], [5]], 5)
    t = torch.randn(2)
    value = ((t, None, (1, 2.5, -math.inf, "softmax"), [t, True]), {"segments": seg, "output_final_state": False})
    tensors: list = []
    spec = encode(value, tensors)
    a, kw = decode(spec, tensors)
    assert a[0] is t and a[1] is None and a[2] == (1, 2.5, -math.inf, "softmax") and a[3][0] is t and a[3][1] is True
    assert isinstance(kw["segments"], Segments) and kw["segments"].num_docs == 3
    assert torch.equal(kw["segments"].doc, seg.doc) and kw["output_final_state"] is False


def test_an_opaque_backend_needs_a_fake_function():
    d = Dispatcher("no_fake_op", lambda x: x, lambda device, caps: ((), {}))
    with pytest.raises(ValueError, match="fake"):
        d.register("cpu", lambda x: x, ("cpu",), Capabilities(), opaque=True)


def _graph_ops(fn, *args):
    """The call targets of the graphs torch.compile makes of ``fn`` (fullgraph: one graph, no breaks)."""
    targets = []

    def backend(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return out, targets


def test_compiled_scan_calls_the_custom_op_with_eager_values_and_gradients():
    from ssmzoo.ops.selective_scan import dispatch, selective_scan

    if not dispatch.usable("cpu", "cpu"):
        pytest.skip("the C++ selective scan is not available here")
    g = torch.Generator().manual_seed(0)
    b, d, n, L = 2, 3, 4, 9
    leaves = [torch.randn(b, d, L, generator=g, dtype=torch.float64), torch.rand(b, d, L, generator=g, dtype=torch.float64),
              -torch.rand(d, n, generator=g, dtype=torch.float64) - 0.5,
              torch.randn(b, n, L, generator=g, dtype=torch.float64), torch.randn(b, n, L, generator=g, dtype=torch.float64),
              torch.randn(b, d, n, generator=g, dtype=torch.float64)]
    leaves = [t.requires_grad_() for t in leaves]

    def f(u, delta, A, B, C, h0):
        return selective_scan(u, delta, A, B, C, initial_state=h0, output_final_state=True, delta_softplus=True)

    (y, h), targets = _graph_ops(f, *leaves)
    assert any("ssmzoo.selective_scan_cpu" in t for t in targets), targets
    y0, h0 = f(*leaves)
    torch.testing.assert_close(y, y0, rtol=0, atol=0)
    torch.testing.assert_close(h, h0, rtol=0, atol=0)
    w = torch.randn(y.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((y * w).sum() + h.sum(), leaves)
    want = torch.autograd.grad((y0 * w).sum() + h0.sum(), leaves)
    for a, b_ in zip(got, want):
        torch.testing.assert_close(a, b_, rtol=1e-12, atol=1e-12)


def _strided(t):
    """The same values laid out with the last two dimensions' strides swapped (a permuted view's layout)."""
    if not isinstance(t, torch.Tensor) or t.dim() < 2 or min(t.shape[-2:]) < 2:
        return t
    return t.mT.contiguous().mT.requires_grad_(t.requires_grad)


@pytest.mark.parametrize("op,name", [v for v in OPAQUE if "cpu" in OPS[v[0]].backends[v[1]].devices
                                     and OPS[v[0]].backends[v[1]].capabilities.grad], ids=lambda v: str(v))
def test_the_gradients_fake_layout_is_the_real_one_for_strided_inputs(op, name):
    """Before: the gradient's fake kept a strided input's layout (empty_like) while the real gradient is contiguous,
    so Inductor read gated_deltanet's gradient of a permuted q with the wrong strides ("expected stride 8==1")."""
    d = OPS[op]
    b = d.backends[name]
    if not d.usable(name, "cpu"):
        pytest.skip(f"{op}: backend {name!r} is not available here")
    args, kwargs = d.probe_case(torch.device("cpu"), b.capabilities)
    tensors: list = []
    spec = encode((args, kwargs), tensors)
    tensors = [_strided(t) for t in tensors]
    assert any(t is not None and not t.is_contiguous() for t in tensors)
    grads = [torch.ones_like(o) for o in b.fn.op(tensors, spec)]
    real = b.fn._backward_impl(tensors, spec, grads)
    fake = b.fn._backward_fake(tensors, spec, grads)

    def layout(t):  # a dimension of size 1 has no meaningful stride
        return t.shape, [st for n, st in zip(t.shape, t.stride()) if n > 1]

    assert [layout(r) for r in real] == [layout(f) for f in fake]
