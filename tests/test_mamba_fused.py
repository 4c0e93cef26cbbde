"""The fused Mamba block (ops/mamba_inner, ops/mamba_step, csrc/mamba_cpu.cpp) against its unfused reference:
forward, every gradient, float64 and float32, awkward shapes (length 1, odd lengths, lengths not a
multiple of the checkpoint chunk, channel counts not a multiple of the kernel's vector width, conv
width 1), with and without states; and the one-token C++ step against the PyTorch step."""

from __future__ import annotations

import pytest
import torch

from ssmzoo import Mamba
from ssmzoo.ops import mamba_inner as fused
from ssmzoo.ops import mamba_step as step_op
from ssmzoo.ops.dispatch import Request
from ssmzoo.ops.mamba_inner import MambaInnerInputs, MambaInnerWeights, mamba_inner, mamba_inner_cpu, mamba_inner_reference
from ssmzoo.ops.mamba_step import MambaStepInputs, MambaStepWeights, mamba_step_cpu, mamba_step_reference
from ssmzoo.ops.segments import Segments

pytestmark = pytest.mark.skipif(not fused.available(), reason="the C++ extension does not build here")

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=6e-4, atol=2e-3)}  # as the scan tests (mamba-ssm)


def make_inputs(batch, length, d, n, rank, width, dtype, bias=True, states=True, seed=0,
                segments=None) -> MambaInnerInputs:
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    w = MambaInnerWeights(leaf(d, width), leaf(d) if bias else None, leaf(rank + 2 * n, d, scale=0.3),
                          leaf(d, rank, scale=0.5), leaf(d), leaf(d, n, scale=0.5), leaf(d))
    count = batch if segments is None else segments.num_docs
    state = (leaf(count, d, width - 1), leaf(count, d, n)) if states else None
    return MambaInnerInputs(leaf(batch, length, 2 * d), w, state, segments)


def outputs_and_grads(fn, x: MambaInnerInputs, seed: int = 1):
    y, (conv_state, ssm_state) = fn(x, output_final_state=True)
    outs = [y, conv_state, ssm_state]
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outs]
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    leaves = [t for t in (x.xz, *x.weights, *(x.initial_state or ())) if t is not None]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return outs, grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch,length,d,n,rank,width", [
    (2, 1, 3, 2, 1, 3),      # length 1
    (2, 7, 5, 3, 2, 4),      # odd length, fewer channels than one vector
    (1, 130, 20, 16, 3, 4),  # two full checkpoint chunks and a partial one; 20 = 16 + 4 channels
    (3, 65, 17, 4, 1, 1),    # conv width 1 (no conv state), one step past a chunk
    (2, 33, 32, 8, 2, 2),    # whole vectors of channels
    (1, 40, 70, 5, 2, 4),    # one batch row: the forward splits 5 (9 in float64) channel blocks into groups; odd N
])
@pytest.mark.parametrize("states", [False, True])
def test_fused_inner_matches_reference(dtype, batch, length, d, n, rank, width, states):
    x = make_inputs(batch, length, d, n, rank, width, dtype, states=states)
    want, want_grads = outputs_and_grads(mamba_inner_reference, x)
    got, got_grads = outputs_and_grads(mamba_inner_cpu, x)
    for o, w in zip(got, want):
        torch.testing.assert_close(o, w, **TOL[dtype])
    for o, w in zip(got_grads, want_grads):
        torch.testing.assert_close(o, w, **TOL[dtype])


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_fused_inner_checkpoint_chunk_does_not_matter(chunk):
    x = make_inputs(2, 10, 9, 4, 2, 4, torch.float64, bias=False)
    want, want_grads = outputs_and_grads(mamba_inner_reference, x)
    got, got_grads = outputs_and_grads(lambda x, output_final_state: mamba_inner_cpu(
        x, output_final_state=output_final_state, chunk=chunk), x)
    for o, w in zip([*got, *got_grads], [*want, *want_grads]):
        torch.testing.assert_close(o, w, **TOL[torch.float64])


def test_fused_inner_without_final_state_and_gradcheck():
    x = make_inputs(1, 6, 3, 2, 1, 3, torch.float64)
    torch.testing.assert_close(mamba_inner_cpu(x), mamba_inner_reference(x), **TOL[torch.float64])
    xz, conv_w, x_w, h0 = x.xz, x.weights.conv_weight, x.weights.x_proj_weight, x.initial_state[1]

    def f(xz, conv_w, x_w, h0):
        w = x.weights._replace(conv_weight=conv_w, x_proj_weight=x_w)
        return mamba_inner_cpu(x._replace(xz=xz, weights=w, initial_state=(x.initial_state[0], h0)))

    assert torch.autograd.gradcheck(f, (xz, conv_w, x_w, h0))


def step_weights(d_model, d, n, rank, width, dtype, biases, seed=0) -> MambaStepWeights:
    g = torch.Generator().manual_seed(seed)
    t = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)  # noqa: E731
    inner = MambaInnerWeights(t(d, width), t(d) if biases else None, t(rank + 2 * n, d, scale=0.3),
                              t(d, rank, scale=0.5), t(d), t(d, n, scale=0.5), t(d))
    return MambaStepWeights(t(2 * d, d_model, scale=0.3), t(2 * d) if biases else None, inner, t(d_model, d, scale=0.3),
                            t(d_model) if biases else None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch,d_model,d,n,rank,width,biases", [
    (1, 4, 8, 4, 1, 4, False), (3, 5, 10, 3, 2, 1, True), (2, 6, 20, 16, 2, 2, True),
    (2, 5, 20, 32, 1, 3, True),  # float32: 16 (AVX-512) or 8 (AVX2) channels at a time, several registers of states
    (2, 5, 13, 24, 1, 3, True),  # float32, AVX2: three 8-state registers, 8 channels then 5
    (2, 5, 9, 36, 1, 3, True),   # a state count that is not a whole number of registers
])
def test_cpp_step_matches_reference_step_over_many_tokens(dtype, batch, d_model, d, n, rank, width, biases):
    w = step_weights(d_model, d, n, rank, width, dtype, biases)
    g = torch.Generator().manual_seed(2)
    xs = torch.randn(40, batch, d_model, generator=g, dtype=torch.float64).to(dtype)
    ref = got = (torch.randn(batch, d, width - 1, generator=g, dtype=torch.float64).to(dtype),
                 torch.randn(batch, d, n, generator=g, dtype=torch.float64).to(dtype))
    for x_t in xs:
        y_ref, ref = mamba_step_reference(MambaStepInputs(x_t, ref, w))
        y, got = mamba_step_cpu(MambaStepInputs(x_t, got, w))
        torch.testing.assert_close(y, y_ref, **TOL[dtype])
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, **TOL[dtype])


def test_cpp_step_leaves_its_input_state_alone():
    w = step_weights(4, 8, 4, 1, 4, torch.float32, True)
    state = (torch.randn(2, 8, 3), torch.randn(2, 8, 4))
    before = tuple(s.clone() for s in state)
    mamba_step_cpu(MambaStepInputs(torch.randn(2, 4), state, w))
    for a, b in zip(state, before):
        assert torch.equal(a, b)


def test_layer_fused_and_unfused_agree_forward_backward_and_step():
    torch.manual_seed(0)
    x = torch.randn(2, 37, 12, dtype=torch.float64)
    layers = {name: Mamba(12, d_state=5, mamba_inner_backend=name).double() for name in ("cpu", "unfused")}
    layers["unfused"].load_state_dict(layers["cpu"].state_dict())
    outs, grads = {}, {}
    for name, layer in layers.items():
        y, state = layer(x, return_state=True)
        y.square().sum().backward()
        outs[name] = (y, *state)
        grads[name] = [p.grad for p in layer.parameters()]
    for a, b in zip(outs["cpu"], outs["unfused"]):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    for a, b in zip(grads["cpu"], grads["unfused"]):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    with torch.no_grad():
        states = {name: layer.init_state(2) for name, layer in layers.items()}
        for t in range(5):
            ys = {}
            for name, layer in layers.items():
                ys[name], states[name] = layer.step(x[:, t], states[name])
            torch.testing.assert_close(ys["cpu"], ys["unfused"], **TOL[torch.float64])


def test_dispatch_is_truthful():
    assert "cpu" in fused.dispatch.names("cpu") and "cpu" in step_op.dispatch.names("cpu")
    cpu = torch.device("cpu")
    choose = lambda **kw: fused.dispatch.choose("auto", Request(cpu, kw.pop("dtype", torch.float32), **kw)).name  # noqa: E731
    assert choose(grad=True, initial_state=True, final_state=True, facts=(("d_state", 16),)) == "cpu"
    assert choose(grad=True, segments=True, final_state=True, facts=(("d_state", 16),)) == "cpu"
    assert choose(facts=(("d_state", 16), ("scan_backend", "chunked"))) == "unfused"
    assert choose(facts=(("d_state", 16), ("conv_backend", "reference"))) == "unfused"
    assert choose(facts=(("d_state", 512),)) == "unfused"
    assert choose(dtype=torch.bfloat16) == "unfused"
    with pytest.raises(ValueError, match="selective_scan backend 'chunked'"):
        fused.dispatch.choose("cpu", Request(cpu, torch.float32, facts=(("scan_backend", "chunked"),)))
    # The C++ step has no backward: a step that needs gradients goes to the PyTorch one.
    assert step_op.dispatch.choose("auto", Request(cpu, torch.float32, grad=True)).name == "reference"
    assert step_op.dispatch.choose("auto", Request(cpu, torch.float32)).name == "cpu"


def test_naming_a_scan_backend_keeps_the_layer_unfused(monkeypatch):
    calls = []
    original = fused.dispatch.backends["unfused"].fn
    monkeypatch.setattr(fused.dispatch.backends["unfused"], "fn", lambda *a, **k: calls.append(1) or original(*a, **k))
    layer = Mamba(8, d_state=4, selective_scan_backend="chunked")
    layer(torch.randn(1, 5, 8))
    assert calls
    with pytest.raises(ValueError, match="mamba_inner_backend"):
        Mamba(8, mamba_inner_backend="nope")
    xz = torch.randn(1, 5, 6)
    w = make_inputs(1, 5, 3, 2, 1, 3, torch.float32).weights
    with pytest.raises(ValueError, match="2·D"):
        mamba_inner(xz[..., :5], w)


# -- packed documents: the fused conv and scan restart at every document start ------------------------
PACKED = [  # (documents per row, channels, state, rank, conv width): a document of length 1, one spanning a row,
    # documents shorter than the conv, and starts on and next to the scan's checkpoint chunk (64)
    ([[1, 5, 17], [23]], 19, 3, 2, 4),
    ([[70, 1, 79], [2, 148]], 5, 2, 1, 3),
    ([[3], [1, 2]], 4, 2, 1, 1),
    ([[64, 1, 1, 64], [1, 127, 2]], 20, 16, 2, 4),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lengths,d,n,rank,width", PACKED)
@pytest.mark.parametrize("states", [False, True])
def test_fused_inner_packed_matches_reference(dtype, lengths, d, n, rank, width, states):
    segments = Segments.from_lengths(lengths, sum(lengths[0]))
    x = make_inputs(len(lengths), segments.length, d, n, rank, width, dtype, states=states, segments=segments)
    want, want_grads = outputs_and_grads(mamba_inner_reference, x)
    got, got_grads = outputs_and_grads(mamba_inner_cpu, x)
    for o, w in zip([*got, *got_grads], [*want, *want_grads]):
        torch.testing.assert_close(o, w, **TOL[dtype])


def test_packed_reference_runs_each_document_alone():
    segments = Segments.from_lengths(PACKED[0][0], 23)
    x = make_inputs(2, 23, 19, 3, 2, 4, torch.float64, segments=segments)
    y, (conv_state, ssm_state) = mamba_inner_reference(x, output_final_state=True)
    for k, (row, t0, t1) in enumerate(segments.spans):
        alone = x._replace(xz=x.xz[row : row + 1, t0:t1], initial_state=tuple(s[k : k + 1] for s in x.initial_state),
                           segments=None)
        y_doc, (c_doc, h_doc) = mamba_inner_reference(alone, output_final_state=True)
        torch.testing.assert_close(y[row : row + 1, t0:t1], y_doc, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(conv_state[k : k + 1], c_doc, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ssm_state[k : k + 1], h_doc, rtol=1e-12, atol=1e-12)
