"""Mamba-2 generation's fused decode: the ``mamba2_lm_step`` op (ops/mamba2_lm_step, csrc/mamba2_lm_step_cpu.cpp), one
token of a whole Mamba-2 LM in one C++ call, against its reference (the PyTorch formulas block by block), against
the model's own forward, and ``generate`` with it on and off; and ``LanguageModel.quantize`` (int8 / bf16 weights),
whose generation is exact to the quantized model's own forward."""

from __future__ import annotations

import pytest
import torch

from ssmzoo.layers.mamba2 import Mamba2
from ssmzoo.models.lm import LanguageModel
from ssmzoo.modules.quantized import QuantizedLinear
from ssmzoo.ops import mamba2_lm_step as lm_step_op
from ssmzoo.ops.dispatch import Request
from ssmzoo.ops.mamba2_lm_step import Mamba2LMStepInputs, mamba2_lm_step
from ssmzoo.ops.mamba2_lm_step.cpu import extension
from ssmzoo.ops.quantized import Int8Matrix, dequantize, quantize_int8

pytestmark = pytest.mark.skipif("cpu" not in lm_step_op.dispatch.names("cpu"),
                                reason="the C++ extension did not build here")

HAS_PANELS = extension() is not None and extension().pack(torch.ones(1, 1)).numel() > 0
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=6e-4, atol=2e-3)}  # as Mamba's step

VARIANTS = [  # (batch, n_layers, layer_args): every setting the kernel branches on
    (1, 2, {}),
    (3, 2, {"ngroups": 2, "D_has_hdim": True, "bias": True}),
    (2, 1, {"norm_before_gate": True, "dt_limit": (0.01, 0.5), "d_conv": 2}),
    (5, 2, {"rmsnorm": False, "conv_bias": False, "headdim": 3}),
    (13, 1, {"d_conv": 1}),  # no conv state; two whole 6-row blocks of the packed matmul and one row
]


def make_model(dtype, n_layers=2, d_model=12, vocab=37, seed=0, **layer_args) -> LanguageModel:
    """A random Mamba-2 LM whose norms, biases and states are not at their initial values."""
    torch.manual_seed(seed)
    args = {"d_state": 5, "headdim": 4, "chunk_size": 4, **layer_args}
    model = LanguageModel(vocab, d_model, n_layers, layer="mamba2", layer_args=args).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def lm_weights(model):
    return Mamba2.lm_step_weights(model.decode_stack())


def random_state(model, batch, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [tuple(torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.dtype) for s in layer)
            for layer in model.init_state(batch, dtype=dtype)]


def reference(token, state, w):
    return lm_step_op.mamba2_lm_step_reference(Mamba2LMStepInputs(token, state, w))


def assert_states_close(got, want, **tol):
    for layer_got, layer_want in zip(got, want, strict=True):
        for a, b in zip(layer_got, layer_want, strict=True):
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("quantized", [None, "int8", "bf16"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch,n_layers,layer_args", VARIANTS)
def test_cpu_lm_step_matches_reference_over_many_tokens(dtype, batch, n_layers, layer_args, quantized):
    model = make_model(dtype, n_layers=n_layers, **layer_args)
    if quantized:
        model.quantize(quantized)
    w = lm_weights(model)
    step = lm_step_op.cpu_stepper(w)
    ref = got = random_state(model, batch, dtype)
    token = torch.arange(batch) % model.vocab_size
    with torch.no_grad():
        for _ in range(16):
            logits_ref, ref = reference(token, ref, w)
            logits, got = step(token, got)
            torch.testing.assert_close(logits, logits_ref, **TOL[dtype])
            assert_states_close(got, ref, **TOL[dtype])
            token = logits_ref.argmax(-1)


@pytest.mark.parametrize("batch,n_layers,layer_args", VARIANTS)
def test_reference_is_the_block_by_block_step(batch, n_layers, layer_args):
    model = make_model(torch.float64, n_layers=n_layers, **layer_args)
    state = random_state(model, batch, torch.float64)
    token = torch.arange(batch) % model.vocab_size
    with torch.no_grad():
        want_logits, want = model._decode(token, state)
        logits, got = reference(token, state, lm_weights(model))
    # the layer's SSD step is the C++ ssd_step in float64: the same formulas, summed in another order
    torch.testing.assert_close(logits, want_logits, rtol=1e-12, atol=1e-12)
    assert_states_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("quantized", [None, "int8", "bf16"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_decode_gives_the_forwards_logits(dtype, quantized):
    """Prefill a prompt, then feed the rest of a sequence through the fused decoder: each step's logits are the
    (quantized) model's own forward's at that position."""
    model = make_model(dtype, n_layers=3, d_model=16, vocab=29, ngroups=2)
    if quantized:
        model.quantize(quantized)
    ids = torch.randint(0, 29, (2, 20), generator=torch.Generator().manual_seed(2))
    decoder = model._decoder()
    assert decoder != model._decode  # the fused path serves this model
    with torch.no_grad():
        want = model(ids)
        logits, state = model._prefill(ids[:, :8])
        torch.testing.assert_close(logits, want[:, 7], **TOL[dtype])
        for t in range(8, 20):
            logits, state = decoder(ids[:, t], state)
            torch.testing.assert_close(logits, want[:, t], **TOL[dtype])


@pytest.mark.parametrize("quantized", [None, "int8"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [1, 3])
def test_generate_gives_the_same_tokens_with_the_fast_decode_on_and_off(dtype, batch, quantized, monkeypatch):
    model = make_model(dtype, n_layers=3, d_model=16, vocab=29)
    if quantized:
        model.quantize(quantized)
    prompt = torch.randint(0, 29, (batch, 9), generator=torch.Generator().manual_seed(4))
    model.decode_backend = "cpu"
    fast = model.generate(prompt, max_new_tokens=20)
    model.decode_backend = "reference"
    ref = model.generate(prompt, max_new_tokens=20)
    model.decode_backend = None
    auto = model.generate(prompt, max_new_tokens=20)
    monkeypatch.setattr(model, "decode_stack", lambda: None)  # the block-by-block step
    blocks = model.generate(prompt, max_new_tokens=20)
    assert torch.equal(fast, ref) and torch.equal(fast, auto) and torch.equal(fast, blocks)
    # greedy generation is the forward's argmax at every new position
    with torch.no_grad():
        logits = model(fast[:, :-1])
    assert torch.equal(logits[:, prompt.shape[1] - 1:].argmax(-1), fast[:, prompt.shape[1]:])


def test_cpu_lm_step_leaves_its_input_state_alone():
    model = make_model(torch.float32)
    state = random_state(model, 3, torch.float32)
    before = [tuple(s.clone() for s in layer) for layer in state]
    with torch.no_grad():
        lm_step_op.mamba2_lm_step_cpu(Mamba2LMStepInputs(torch.tensor([1, 2, 3]), state, lm_weights(model)))
    assert_states_close(state, before, rtol=0, atol=0)


def test_stepper_defers_to_the_op_under_autograd():
    model = make_model(torch.float32, n_layers=2)
    w = lm_weights(model)
    state = random_state(model, 2, torch.float32)
    step = lm_step_op.mamba2_lm_stepper(w)
    h = state[0][1].clone().requires_grad_()
    logits, _ = step(torch.tensor([1, 2]), [(state[0][0], h)] + state[1:])
    logits.sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    with torch.no_grad(), pytest.raises(ValueError, match="state must hold one"):
        step(torch.tensor([1, 2]), state[:1])


def test_dispatch_choice():
    cpu = torch.device("cpu")
    assert lm_step_op.dispatch.choose("auto", Request(cpu, torch.float32)).name == "cpu"
    assert lm_step_op.dispatch.choose("auto", Request(cpu, torch.float32, grad=True)).name == "reference"
    assert lm_step_op.dispatch.choose("auto", Request(cpu, torch.bfloat16)).name == "reference"


def test_other_stacks_step_block_by_block():
    torch.manual_seed(0)
    with_mlp = LanguageModel(20, 8, 2, layer="mamba2", layer_args={"d_state": 4, "headdim": 4}, d_intermediate=16)
    multiplied = LanguageModel(20, 8, 2, layer="mamba2",
                               layer_args={"d_state": 4, "headdim": 4, "in_proj_multipliers": (1, 2, 1, 1, 0.5)})
    for model in (with_mlp.eval(), multiplied.eval()):
        assert lm_weights(model) is None
        assert model._decoder() == model._decode
    reference_layers = LanguageModel(20, 8, 2, layer="mamba2",
                                     layer_args={"d_state": 4, "headdim": 4, "ssd_backend": "reference"}).eval()
    calls = []
    original = lm_step_op.dispatch.choose
    lm_step_op.dispatch.choose = lambda backend, request: calls.append(backend) or original(backend, request)
    try:
        reference_layers.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3)
    finally:
        lm_step_op.dispatch.choose = original
    assert calls == ["reference"]  # chosen once per generate call, not per token


def test_bad_input_gives_a_clear_error():
    model = make_model(torch.float32)
    w = lm_weights(model)
    state = random_state(model, 2, torch.float32)
    token = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="token must be a non-empty"):
        mamba2_lm_step(token.float(), state, w)
    with pytest.raises(ValueError, match="state must hold one"):
        mamba2_lm_step(token, state[:1], w)
    with torch.no_grad():
        with pytest.raises(ValueError, match="token ids must lie in"):
            mamba2_lm_step(torch.tensor([1, model.vocab_size]), state, w, backend="cpu")
        with pytest.raises(ValueError, match=r"state must be \(conv_state"):
            mamba2_lm_step(torch.tensor([1]), state, w, backend="cpu")  # a batch of 1, states of 2
        with pytest.raises(ValueError, match="state must be"):
            mamba2_lm_step(token, [(c, h.double()) for c, h in state], w, backend="cpu")
    with pytest.raises(ValueError, match="LanguageModel.quantize: mode must be one of"):
        model.quantize("int4")


# -- the quantized matrices and their packed kernel ------------------------------------------------------------
def test_int8_quantization_is_per_row_symmetric_and_bounded():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(9, 33, generator=g) * torch.logspace(-3, 2, 9)[:, None]
    w[4] = 0  # an all-zero row keeps scale 1 (no division by zero)
    m = quantize_int8(w)
    assert m.values.dtype == torch.int8 and m.values.abs().max() <= 127 and m.scale.shape == (9,)
    assert torch.equal(m.values[4], torch.zeros(33, dtype=torch.int8)) and m.scale[4] == 1
    # each row's largest entry maps to ±127, every entry within half a step of its value
    assert (m.values.abs().amax(1)[torch.arange(9) != 4] == 127).all()
    err = (dequantize(m, torch.float64) - w.double()).abs()
    assert (err <= 0.5 * m.scale.double()[:, None] * (1 + 1e-6)).all()
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_int8(torch.tensor([[1.0, float("nan")]]))


@pytest.mark.skipif(not HAS_PANELS, reason="no SIMD matmul kernel for this CPU")
@pytest.mark.parametrize("kind", ["float32", "bf16", "int8"])
@pytest.mark.parametrize("m,n,k", [(1, 37, 5), (6, 16, 1), (7, 1024, 256), (13, 17, 16), (1, 50, 768)])
def test_packed_matmul_of_stored_weights_matches_float64(kind, m, n, k):
    g = torch.Generator().manual_seed(m * 1000 + n)
    w, x = torch.randn(n, k, generator=g), torch.randn(m, k, generator=g)
    ext, empty = extension(), torch.empty(0)
    if kind == "int8":
        q = quantize_int8(w)
        panels, scales, value = ext.pack(q.values), ext.pack_scales(q.scale), dequantize(q, torch.float64)
    else:
        stored = w.to(torch.bfloat16) if kind == "bf16" else w
        panels, scales, value = ext.pack(stored), empty, stored.double()
    got = ext.packed_linear(x, w, panels, scales)
    # float32 products of the exact stored values summed over k terms (and one scale): within (k+1) ulps
    bound = (k + 1) * torch.finfo(torch.float32).eps * (x.abs().double() @ value.abs().T) + 1e-30
    assert got.shape == (m, n)
    assert ((got.double() - x.double() @ value.T).abs() <= bound).all()


def test_quantized_linear_is_its_dequantized_weight():
    torch.manual_seed(0)
    linear = torch.nn.Linear(10, 6)
    x = torch.randn(3, 10)
    for mode in ("int8", "bf16"):
        q = QuantizedLinear(linear, mode)
        stored = q.matrix()
        assert isinstance(stored, Int8Matrix) if mode == "int8" else stored.dtype == torch.bfloat16
        torch.testing.assert_close(q(x), x @ dequantize(stored, torch.float32).T + linear.bias, rtol=0, atol=1e-6)
        # float64 keeps the stored values exactly
        q64 = QuantizedLinear(linear, mode).double()
        assert torch.equal(q64.weight, dequantize(stored, torch.float64))
