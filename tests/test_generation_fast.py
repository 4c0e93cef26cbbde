"""Generation's fast decode: the ``mamba_lm_step`` op (ops/mamba_lm_step, ``lm_step`` in csrc/mamba_cpu.cpp), one
token of a whole Mamba LM in one C++ call, against its reference (the block-by-block PyTorch step), and
``generate`` with it on and off; plus the prefill that runs the head on the last position only."""

from __future__ import annotations

import pytest
import torch

from ssmzoo.models.lm import LanguageModel
from ssmzoo.ops import mamba_lm_step as lm_step_op
from ssmzoo.ops.dispatch import Request
from ssmzoo.layers.mamba import Mamba
from ssmzoo.layers.mamba2 import Mamba2
from ssmzoo.ops.mamba_inner.cpu import extension
from ssmzoo.ops.mamba_lm_step import MambaLMStepInputs, mamba_lm_step
from ssmzoo.ops.mamba_lm_step import mamba_lm_step_cpu as cpu_of_bundle
from ssmzoo.ops.mamba_lm_step import mamba_lm_step_reference as reference_of_bundle


def mamba_lm_step_reference(token, state, weights):
    return reference_of_bundle(MambaLMStepInputs(token, state, weights))


def mamba_lm_step_cpu(token, state, weights):
    return cpu_of_bundle(MambaLMStepInputs(token, state, weights))

def lm_weights(model):
    """The model's weights as the mamba_lm_step op takes them (None unless a plain Mamba stack)."""
    return Mamba.lm_step_weights(model.decode_stack())


pytestmark = pytest.mark.skipif("cpu" not in lm_step_op.dispatch.names("cpu"),
                                reason="the C++ extension did not build here")

HAS_PANELS = extension() is not None and extension().pack_panels(torch.ones(1, 1)).numel() > 0
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=6e-4, atol=2e-3)}  # as test_mamba_fused


def make_model(dtype, n_layers=2, d_model=12, vocab=37, seed=0, **layer_args) -> LanguageModel:
    """A random Mamba LM whose norms, biases and states are not at their (symmetric) initial values."""
    torch.manual_seed(seed)
    model = LanguageModel(vocab, d_model, n_layers, layer_args={"d_state": 5, **layer_args}).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def random_state(model, batch, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [tuple(torch.randn(s.shape, generator=g, dtype=torch.float64).to(dtype) for s in layer)
            for layer in model.init_state(batch, dtype=dtype)]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch,n_layers,layer_args", [
    (1, 2, {}),
    (3, 3, {"bias": True, "d_state": 16}),
    (5, 1, {"d_conv": 1, "conv_bias": False}),        # no conv state
    (2, 2, {"d_conv": 2, "expand": 3, "dt_rank": 3}),  # D_inner not a multiple of the C++ block (64)
    (13, 2, {"bias": True}),                           # two whole 6-row blocks of the packed matmul and one row
])
def test_cpu_lm_step_matches_reference_over_many_tokens(dtype, batch, n_layers, layer_args, packed):
    model = make_model(dtype, n_layers=n_layers, d_model=24 if layer_args.get("expand") == 3 else 12, **layer_args)
    w = lm_weights(model)
    if packed:
        w = lm_step_op.pack_weights(w)
        # float32 only (and only where this CPU has the SIMD kernel); float64 steps multiply with ATen
        assert (w.packed is None) == (dtype == torch.float64 or not HAS_PANELS)
    ref = got = random_state(model, batch, dtype)
    token = torch.arange(batch) % model.vocab_size
    with torch.no_grad():
        for _ in range(40):
            logits_ref, ref = mamba_lm_step_reference(token, ref, w)
            logits, got = mamba_lm_step_cpu(token, got, w)
            torch.testing.assert_close(logits, logits_ref, **TOL[dtype])
            for layer_got, layer_ref in zip(got, ref):
                for a, b in zip(layer_got, layer_ref):
                    torch.testing.assert_close(a, b, **TOL[dtype])
            token = logits_ref.argmax(-1)


def test_reference_is_the_block_by_block_step():
    # mamba_inner_backend="reference": the layers step with the PyTorch formulas, as the op's reference does
    model = make_model(torch.float64, n_layers=3, mamba_inner_backend="reference")
    state = random_state(model, 2, torch.float64)
    token = torch.tensor([3, 7])
    with torch.no_grad():
        want_logits, want = model._decode(token, state)
        logits, got = mamba_lm_step_reference(token, state, lm_weights(model))
    torch.testing.assert_close(logits, want_logits, rtol=0, atol=0)
    for layer_got, layer_want in zip(got, want):
        for a, b in zip(layer_got, layer_want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cpu_lm_step_leaves_its_input_state_alone():
    model = make_model(torch.float32)
    state = random_state(model, 3, torch.float32)
    before = [tuple(s.clone() for s in layer) for layer in state]
    with torch.no_grad():
        mamba_lm_step_cpu(torch.tensor([1, 2, 3]), state, lm_weights(model))
    for layer, layer_before in zip(state, before):
        for a, b in zip(layer, layer_before):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [1, 3])
def test_generate_gives_the_same_tokens_with_the_fast_decode_on_and_off(dtype, batch, monkeypatch):
    model = make_model(dtype, n_layers=3, d_model=16, vocab=29)
    prompt = torch.randint(0, 29, (batch, 9), generator=torch.Generator().manual_seed(4))
    model.decode_backend = "cpu"
    fast = model.generate(prompt, max_new_tokens=30)
    model.decode_backend = "reference"
    reference = model.generate(prompt, max_new_tokens=30)
    model.decode_backend = None
    auto = model.generate(prompt, max_new_tokens=30)
    monkeypatch.setattr(model, "decode_stack", lambda: None)  # the block-by-block step
    blocks = model.generate(prompt, max_new_tokens=30)
    assert torch.equal(fast, reference) and torch.equal(fast, auto) and torch.equal(fast, blocks)
    # and sampling draws the same tokens from the same seed
    model.decode_backend = "cpu"
    a = model.generate(prompt, max_new_tokens=12, do_sample=True, top_k=5, seed=3)
    model.decode_backend = "reference"
    b = model.generate(prompt, max_new_tokens=12, do_sample=True, top_k=5, seed=3)
    assert torch.equal(a, b)


def test_prefill_gives_forwards_last_logits_and_state():
    model = make_model(torch.float64)
    ids = torch.randint(0, model.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, state = model(ids, return_state=True)
        last, prefill_state = model._prefill(ids)
    torch.testing.assert_close(last, logits[:, -1], rtol=1e-12, atol=1e-12)
    for i, (layer_got, layer_want) in enumerate(zip(prefill_state, state)):
        # the last layer's state comes from Mamba.final_state, whose in_proj multiplies by the weight's x half
        # alone: the same sums, which a BLAS may round apart from the full matrix's
        tol = dict(rtol=1e-12, atol=1e-12) if i == len(state) - 1 else dict(rtol=0, atol=0)
        for a, b in zip(layer_got, layer_want):
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("layer", ["mamba", "mamba2"])
@pytest.mark.parametrize("rows", [1, 5, 8, 21])
def test_prefill_in_pieces_equals_one_call(rows, layer, monkeypatch):
    # prefill_rows rows (batch x length) per call: pieces of 1, 2, 4 and 10 tokens for a batch of 2 (Mamba-2's
    # chunk of 4 makes the pieces of 10 tokens end inside a chunk)
    if layer == "mamba":
        model, cls = make_model(torch.float64, n_layers=3), Mamba
    else:
        torch.manual_seed(0)
        model = LanguageModel(37, 16, 3, layer="mamba2", layer_args={"d_state": 5, "headdim": 8, "chunk_size": 4})
        model, cls = model.double().eval(), Mamba2
    ids = torch.randint(0, model.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    calls = []
    model.embedding.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))  # one per piece
    with torch.no_grad():
        monkeypatch.setattr(cls, "prefill_rows", None)
        want_logits, want = model._prefill(ids)
        monkeypatch.setattr(cls, "prefill_rows", rows)
        logits, got = model._prefill(ids)
    piece = max(1, rows // 2)
    assert calls == [11] + [min(piece, 11 - start) for start in range(0, 11, piece)]
    torch.testing.assert_close(logits, want_logits, rtol=1e-12, atol=1e-12)
    for layer_got, layer_want in zip(got, want):
        for a, b in zip(layer_got, layer_want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer,layer_args", [("mamba", {"d_state": 5, "bias": True}), ("s4d", {})])
def test_prefill_runs_the_last_block_on_the_last_position_only(layer, layer_args):
    torch.manual_seed(0)
    model = LanguageModel(23, 12, 2, layer=layer, layer_args=layer_args).double().eval()
    ids = torch.randint(0, 23, (3, 9), generator=torch.Generator().manual_seed(1))
    lengths = []
    model.layers[-1].mixer.register_forward_hook(lambda module, args, out: lengths.append(args[0].shape[1]))
    with torch.no_grad():
        logits, state = model(ids, return_state=True)
        lengths.clear()
        last, got = model._prefill(ids)
    # Mamba: the first 8 positions only advance the state (final_state, no forward); S4D has no cheaper state
    assert lengths == ([1] if layer == "mamba" else [9])
    torch.testing.assert_close(last, logits[:, -1], rtol=1e-12, atol=1e-12)
    for layer_got, layer_want in zip(got, state):
        for a, b in zip(layer_got, layer_want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not HAS_PANELS, reason="no SIMD matmul kernel for this CPU")
@pytest.mark.parametrize("m,n,k", [(1, 37, 5), (6, 16, 1), (7, 1024, 256), (13, 17, 16), (16, 48, 512), (0, 5, 3)])
def test_packed_matmul_matches_float64(m, n, k):
    g = torch.Generator().manual_seed(m * 1000 + n)
    w, x = torch.randn(n, k, generator=g), torch.randn(m, k, generator=g)
    panels = extension().pack_panels(w)
    got = extension().packed_linear(x, panels, w)
    # float32 products summed in float32 over k terms: within k ulps of |x| |w|
    bound = k * torch.finfo(torch.float32).eps * (x.abs().double() @ w.abs().double().T) + 1e-30
    assert got.shape == (m, n)
    assert ((got.double() - x.double() @ w.double().T).abs() <= bound).all()


@pytest.mark.skipif(not HAS_PANELS, reason="no SIMD matmul kernel for this CPU")
def test_packed_weights_of_another_model_are_refused():
    model, other = make_model(torch.float32), make_model(torch.float32, d_model=16)
    w = lm_weights(model)
    w_other = lm_step_op.pack_weights(lm_weights(other))
    assert w_other.packed is not None
    state = random_state(model, 2, torch.float32)
    with torch.no_grad(), pytest.raises(ValueError, match="packed weights do not match"):
        mamba_lm_step_cpu(torch.tensor([1, 2]), state, w._replace(packed=w_other.packed))
    with torch.no_grad(), pytest.raises(ValueError, match="panels must be empty or hold 4 per layer"):
        mamba_lm_step_cpu(torch.tensor([1, 2]), state, w._replace(packed=w_other.packed[:3]))


def test_stepper_equals_the_op_and_defers_to_it_under_autograd(monkeypatch):
    model = make_model(torch.float32, n_layers=3)
    w = lm_weights(model)
    state = random_state(model, 7, torch.float32)
    token = torch.arange(7) % model.vocab_size
    made, cpu_stepper = [], lm_step_op.cpu_stepper
    monkeypatch.setattr(lm_step_op, "cpu_stepper", lambda w: made.append(w) or cpu_stepper(w))
    step = lm_step_op.mamba_lm_stepper(w)
    assert len(made) == 1  # made with autograd on, for calls without it: the C++ backend serves them
    with torch.no_grad():
        want_logits, want = mamba_lm_step_reference(token, state, w)
        logits, got = step(token, state)
        with pytest.raises(ValueError, match="state must hold one"):
            step(token, state[:2])
    torch.testing.assert_close(logits, want_logits, **TOL[torch.float32])
    for layer_got, layer_want in zip(got, want):
        for a, b in zip(layer_got, layer_want):
            torch.testing.assert_close(a, b, **TOL[torch.float32])
    # with autograd on, a state that needs gradients gets them (the reference serves), as from the op
    h = state[0][1].clone().requires_grad_()
    logits, _ = step(token, [(state[0][0], h)] + state[1:])
    logits.sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_dispatch_choice():
    cpu = torch.device("cpu")
    assert lm_step_op.dispatch.choose("auto", Request(cpu, torch.float32)).name == "cpu"
    # no backward in C++; half precision and large states stay with the reference
    assert lm_step_op.dispatch.choose("auto", Request(cpu, torch.float32, grad=True)).name == "reference"
    assert lm_step_op.dispatch.choose("auto", Request(cpu, torch.bfloat16)).name == "reference"
    assert lm_step_op.dispatch.choose("auto", Request(cpu, torch.float32, facts=(("d_state", 300),))).name == "reference"


def test_other_stacks_and_unfused_layers_step_block_by_block():
    torch.manual_seed(0)
    with_mlp = LanguageModel(20, 8, 2, layer_args={"d_state": 4}, d_intermediate=16).eval()
    s4d = LanguageModel(20, 8, 2, layer="s4d").eval()
    for model in (with_mlp, s4d):
        assert lm_weights(model) is None
        assert model._decoder() == model._decode
    unfused = LanguageModel(20, 8, 2, layer_args={"d_state": 4, "mamba_inner_backend": "unfused"}).eval()
    calls = []
    original = lm_step_op.dispatch.choose
    lm_step_op.dispatch.choose = lambda backend, request: calls.append(backend) or original(backend, request)
    try:
        unfused.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3)
    finally:
        lm_step_op.dispatch.choose = original
    assert calls == ["reference"]  # chosen once per generate call (mamba_lm_stepper), not per token


def test_bad_input_gives_a_clear_error():
    model = make_model(torch.float32)
    w = lm_weights(model)
    state = random_state(model, 2, torch.float32)
    token = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="token must be a non-empty"):
        mamba_lm_step(token.float(), state, w)
    with pytest.raises(ValueError, match="token must be a non-empty"):
        mamba_lm_step(token[None], state, w)
    with pytest.raises(ValueError, match="state must hold one"):
        mamba_lm_step(token, state[:1], w)
    with torch.no_grad():  # the C++ backend has no backward
        with pytest.raises(ValueError, match="token ids must lie in"):
            mamba_lm_step(torch.tensor([1, model.vocab_size]), state, w, backend="cpu")
        with pytest.raises(ValueError, match=r"state must be \(conv_state"):
            mamba_lm_step(torch.tensor([1]), state, w, backend="cpu")  # a batch of 1, states of 2
        with pytest.raises(ValueError, match="state must be"):
            mamba_lm_step(token, [(c, h.double()) for c, h in state], w, backend="cpu")
    model.decode_backend = "fast"
    with pytest.raises(ValueError, match="LanguageModel: unknown decode_backend 'fast'"):
        model.generate(torch.tensor([[1, 2]]), max_new_tokens=2)


@pytest.mark.parametrize("mode", ["int8", "bf16"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_quantized_model_decodes_exactly_to_its_own_forward(dtype, mode, monkeypatch):
    """``LanguageModel.quantize``: the fused step multiplies the stored int8 / bf16 panels (float32), the same values
    the quantized model's forward uses; greedy tokens equal the block-by-block decode, logits the forward's."""
    model = make_model(dtype, n_layers=3, d_model=16, vocab=29, bias=True).quantize(mode)
    ids = torch.randint(0, 29, (2, 16), generator=torch.Generator().manual_seed(5))
    decoder = model._decoder()
    assert decoder != model._decode
    with torch.no_grad():
        want = model(ids)
        logits, state = model._prefill(ids[:, :6])
        for t in range(6, 16):
            logits, state = decoder(ids[:, t], state)
            torch.testing.assert_close(logits, want[:, t], **TOL[dtype])
    if dtype == torch.float32 and HAS_PANELS:  # the panels hold the stored form, not a float copy
        stepper_weights = lm_step_op.pack_weights(
            lm_weights(model), [m.matrix() for b in model.layers for m in (b.mixer.in_proj, b.mixer.x_proj,
                                                                            b.mixer.dt_proj, b.mixer.out_proj)]
            + [model.lm_head.matrix()])
        assert {p.dtype for p in stepper_weights.packed} == {torch.int8 if mode == "int8" else torch.bfloat16}
    fast = model.generate(ids[:, :6], max_new_tokens=16)
    monkeypatch.setattr(model, "decode_stack", lambda: None)
    assert torch.equal(fast, model.generate(ids[:, :6], max_new_tokens=16))
