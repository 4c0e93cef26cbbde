"""The Mamba-2 layer beyond the conformance suite: the block equals its equations written out token by token
(every option), Hugging Face's Mamba2Mixer with the same weights, step == forward over 1,000 tokens, packed
documents equal each document run alone (convolution and SSD, states in and out), the final state is asked of
the SSD only when wanted (so mamba-ssm's fused kernel serves the rest), its init, and its argument errors.
GPU checks (Triton and mamba-ssm against the reference) are marked ``gpu`` and skip without CUDA."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from ssmzoo import Mamba2, Segments
from ssmzoo.layers import SequenceLayer
from ssmzoo.ops import ssd as ssd_op
from ssmzoo.ops.ssd import ssd

SMALL = dict(d_state=4, d_conv=4, headdim=4, ngroups=2, chunk_size=4)


def make(d_model=16, dtype=torch.float64, seed=0, **args):
    torch.manual_seed(seed)
    layer = Mamba2(d_model, **{**SMALL, **args}).to(dtype)
    with torch.no_grad():  # non-trivial values everywhere (the init has D = 1, norm weight = 1, zero biases)
        for name, p in layer.named_parameters():
            if name in ("D", "norm.weight") or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    return layer


def rand(*shape, dtype=torch.float64, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# -- the block against its equations -----------------------------------------------------------
def block_by_equations(layer: Mamba2, u, conv_state=None, ssm_state=None):
    """Mamba-2 from the paper's equations, with loops and plain tensor ops only (no ssmzoo op or module):
    returns y (batch, length, d_model) and the final (conv window, S)."""
    batch, length, _ = u.shape
    H, P, G, N, W = layer.nheads, layer.headdim, layer.ngroups, layer.d_state, layer.d_conv
    zxbcdt = u @ layer.in_proj.weight.T + (layer.in_proj.bias if layer.in_proj.bias is not None else 0)
    z, xBC, dt = zxbcdt[..., : layer.d_inner], zxbcdt[..., layer.d_inner : -H], zxbcdt[..., -H:]
    taps = layer.conv1d.weight[:, 0]  # (conv_dim, W): taps[:, -1] multiplies the current input
    window = conv_state if conv_state is not None else u.new_zeros(batch, layer.conv_dim, W - 1)
    S = ssm_state if ssm_state is not None else u.new_zeros(batch, H, P, N)
    A = -torch.exp(layer.A_log)
    D = layer.D.reshape(H, P) if layer.D_has_hdim else layer.D[:, None]
    outs = []
    for t in range(length):
        full = torch.cat([window, xBC[:, t, :, None]], dim=-1)  # (batch, conv_dim, W)
        window = full[..., 1:]
        c = (full * taps).sum(-1) + (layer.conv1d.bias if layer.conv1d.bias is not None else 0)
        c = c * torch.sigmoid(c)
        x = c[:, : layer.d_inner].reshape(batch, H, P)
        B = c[:, layer.d_inner : layer.d_inner + G * N].reshape(batch, G, N).repeat_interleave(H // G, dim=1)
        C = c[:, layer.d_inner + G * N :].reshape(batch, G, N).repeat_interleave(H // G, dim=1)
        delta = torch.log1p(torch.exp(dt[:, t] + layer.dt_bias)).clamp(*layer.dt_limit)  # (batch, H)
        S = torch.exp(delta * A)[..., None, None] * S + (delta[..., None] * x)[..., None] * B[:, :, None, :]
        y = (S * C[:, :, None, :]).sum(-1) + D * x  # (batch, H, P)
        y = y.reshape(batch, layer.d_inner)
        gate = z[:, t] * torch.sigmoid(z[:, t])
        if layer.norm is None:
            y = y * gate
        else:
            if not layer.norm.norm_before_gate:
                y = y * gate
            groups = y.reshape(batch, G, -1)
            y = (groups / torch.sqrt(groups.pow(2).mean(-1, keepdim=True) + layer.norm.eps)).reshape(batch, -1)
            y = y * layer.norm.weight
            if layer.norm.norm_before_gate:
                y = y * gate
        outs.append(y @ layer.out_proj.weight.T + (layer.out_proj.bias if layer.out_proj.bias is not None else 0))
    return torch.stack(outs, 1), (window, S)


OPTIONS = [
    {},
    dict(ngroups=1, d_conv=1),
    dict(ngroups=4, bias=True, conv_bias=False, dt_limit=(0.02, 0.3)),
    dict(rmsnorm=False, D_has_hdim=True),
    dict(norm_before_gate=True, headdim=8, d_conv=2, A_init_range=(0.5, 2.0)),
]


@pytest.mark.parametrize("args", OPTIONS, ids=lambda a: ",".join(a) or "defaults")
def test_the_block_is_its_equations(args):
    layer = make(**args)
    u = rand(2, 13, 16)
    conv0, ssm0 = rand(2, layer.conv_dim, layer.d_conv - 1, seed=2), rand(2, layer.nheads, layer.headdim, 4, seed=3)
    y, (conv, ssm) = layer(u, state=(conv0, ssm0), return_state=True)
    expected, (conv_e, ssm_e) = block_by_equations(layer, u, conv0, ssm0)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    # The equations' in_proj is another product order than the layer's (a BLAS may round them differently), so
    # the window is compared as y is; that it holds the layer's own projected inputs unchanged is exact.
    torch.testing.assert_close(conv, conv_e, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ssm, ssm_e, rtol=1e-10, atol=1e-10)
    width = layer.d_conv - 1
    if width:
        torch.testing.assert_close(conv, layer._project(u)[1][..., -width:], rtol=0, atol=0)


def test_step_equals_forward_over_1000_tokens():
    """Several hundred chunks of the SSD's chunked algorithm against 1,000 O(1) steps, float64."""
    layer = make(d_state=8, chunk_size=64)
    x = rand(2, 1000, 16)
    with torch.no_grad():
        y, final = layer(x, return_state=True)
        state = layer.init_state(2)
        outs = []
        for t in range(x.shape[1]):
            y_t, state = layer.step(x[:, t], state)
            outs.append(y_t)
    torch.testing.assert_close(torch.stack(outs, 1), y, rtol=1e-9, atol=1e-9)
    for a, b in zip(state, final):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_state_dtypes():
    """The conv window in the input's dtype; S in the SSD op's state dtype (float32 for half inputs)."""
    for dtype, ssm_dtype in ((torch.float64, torch.float64), (torch.float32, torch.float32),
                             (torch.bfloat16, torch.float32)):
        layer = make(dtype=dtype)
        conv, ssm = layer.init_state(3)
        assert conv.shape == (3, layer.conv_dim, 3) and conv.dtype == dtype
        assert ssm.shape == (3, layer.nheads, 4, 4) and ssm.dtype == ssm_dtype
        _, (conv2, ssm2) = layer(rand(3, 5, 16, dtype=dtype), return_state=True)
        assert conv2.dtype == dtype and ssm2.dtype == ssm_dtype
        _, (conv3, ssm3) = layer.step(rand(3, 16, dtype=dtype), (conv2, ssm2))
        assert conv3.dtype == dtype and ssm3.dtype == ssm_dtype


# -- Hugging Face's mixer, an independent implementation ------------------------------------------
def test_equals_hugging_face_mixer():
    transformers = pytest.importorskip("transformers")
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    config = transformers.Mamba2Config(hidden_size=16, num_heads=8, head_dim=4, state_size=4, n_groups=2,
                                       conv_kernel=4, expand=2, chunk_size=8, use_bias=True, num_hidden_layers=1,
                                       time_step_limit=(0.0, 0.5), layer_norm_epsilon=1e-5)
    torch.manual_seed(0)
    theirs = Mamba2Mixer(config, layer_idx=0).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    ours = Mamba2(16, d_state=4, d_conv=4, expand=2, headdim=4, ngroups=2, chunk_size=8, bias=True,
                  dt_limit=(0.0, 0.5)).eval()
    ours.load_state_dict(theirs.state_dict())  # by name: the names are mamba-ssm's
    x = rand(2, 21, 16, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


# -- packed documents -------------------------------------------------------------------------------
# Two rows of 17 tokens: row 0 holds documents of 5, 1, 9 and 2 tokens (the last shorter than the conv window),
# row 1 one document of 3 and one of 14.
DOCS = [[5, 1, 9, 2], [3, 14]]
LENGTH = 17


def packing():
    seq_idx = torch.stack([torch.repeat_interleave(torch.arange(len(d)), torch.tensor(d)) for d in DOCS])
    bounds = [0]
    for n in (n for docs in DOCS for n in docs):
        bounds.append(bounds[-1] + n)
    return seq_idx.to(torch.int32), torch.tensor(bounds, dtype=torch.int32)


def spans():
    for r, docs in enumerate(DOCS):
        start = 0
        for k, n in enumerate(docs):
            yield r, k, start, start + n
            start += n


@pytest.mark.parametrize("how", ["seq_idx", "cu_seqlens"])
def test_packed_documents_equal_each_document_alone(how):
    layer = make()
    x = rand(2, LENGTH, 16)
    seq_idx, cu_seqlens = packing()
    segments = (Segments.from_seq_idx(seq_idx) if how == "seq_idx"
                else Segments.from_cu_seqlens(cu_seqlens, 2, LENGTH))
    y = layer(x, segments=segments)
    for r, _, a, b in spans():
        torch.testing.assert_close(y[r : r + 1, a:b], layer(x[r : r + 1, a:b]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("ssd_backend", ["reference", "chunked", None])
def test_packed_documents_with_states(ssd_backend):
    """Each document's own state enters it (conv window and SSM state), and each leaves its own final state,
    documents shorter than the conv window included; every SSD backend."""
    layer = make(ssd_backend=ssd_backend)
    x = rand(2, LENGTH, 16)
    segments = Segments.from_seq_idx(packing()[0])
    _, state = layer(rand(segments.num_docs, 6, 16, seed=5), return_state=True)  # a non-zero state per document
    y, final = layer(x, state=state, return_state=True, segments=segments)
    for k, (r, _, a, b) in enumerate(spans()):
        alone, alone_final = layer(x[r : r + 1, a:b], state=tuple(s[k : k + 1] for s in state), return_state=True)
        torch.testing.assert_close(y[r : r + 1, a:b], alone, rtol=1e-10, atol=1e-10)
        for got, want in zip(final, alone_final):
            torch.testing.assert_close(got[k : k + 1], want, rtol=1e-10, atol=1e-10)


def test_the_fast_path_equals_the_exact_fallback():
    """Mamba-2's one-pass packed forward against the base class's each-document-alone fallback: outputs,
    per-document final states and the gradients of both."""
    layer = make()
    x = rand(2, LENGTH, 16).requires_grad_()
    segments = Segments.from_seq_idx(packing()[0])
    with torch.no_grad():
        _, state = layer(rand(segments.num_docs, 4, 16, seed=3), return_state=True)
    fast = layer._forward_segments(x, state, segments, True)
    slow = SequenceLayer._forward_segments(layer, x, state, segments, True)
    weights = torch.randn_like(x)
    grads = [torch.autograd.grad((y * weights).sum(), [x, *layer.parameters()]) for y in (fast[0], slow[0])]
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-10, atol=1e-10)
    for a, b in zip([*fast[1], *grads[0]], [*slow[1], *grads[1]]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_packed_gradients_stay_in_their_document():
    layer = make()
    x = rand(2, LENGTH, 16).requires_grad_()
    y = layer(x, segments=Segments.from_seq_idx(packing()[0]))
    y[0, 5].sum().backward()  # the single-token document of row 0
    touched = x.grad.abs().sum(-1) > 0
    expected = torch.zeros(2, LENGTH, dtype=torch.bool)
    expected[0, 5] = True
    assert torch.equal(touched, expected)


def test_one_document_per_row_is_the_unpacked_call():
    layer = make()
    x = rand(2, LENGTH, 16)
    _, state = layer(rand(2, 3, 16, seed=4), return_state=True)
    segments = Segments.from_seq_idx(torch.zeros(2, LENGTH, dtype=torch.long))
    y, final = layer(x, state=state, return_state=True, segments=segments)
    y0, final0 = layer(x, state=state, return_state=True)
    torch.testing.assert_close(y, y0, rtol=1e-10, atol=1e-10)
    for a, b in zip(final, final0):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# -- the fused kernel serves calls that need no state ------------------------------------------------
@pytest.fixture
def fused_ssd_stand_in(monkeypatch):
    """A stand-in for mamba-ssm's mamba_chunk_scan_combined that records its calls (computing with our
    reference), made visible to the ssd dispatch on CPU."""
    calls = []

    def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                                  seq_idx=None, dt_softplus=False, dt_limit=(0.0, math.inf), return_final_states=False):
        calls.append(dict(packed=seq_idx is not None, final_state=return_final_states))
        return ssd(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit,
                   initial_state=initial_states, output_final_state=return_final_states, backend="reference",
                   segments=None if seq_idx is None else Segments.from_seq_idx(seq_idx))

    combined = types.ModuleType("mamba_ssm.ops.triton.ssd_combined")
    combined.mamba_chunk_scan_combined = mamba_chunk_scan_combined
    for name in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.triton.ssd_combined", combined)
    backend = ssd_op.dispatch.backends["mamba_ssm"]
    monkeypatch.setattr(backend, "devices", ("cuda", "cpu"))
    monkeypatch.setattr(backend, "available", lambda: True)
    monkeypatch.setattr(ssd_op.dispatch, "_probed", {})
    assert ssd_op.dispatch.usable("mamba_ssm", torch.device("cpu"))  # the stand-in passes the probe
    calls.clear()
    yield calls
    ssd_op.dispatch.reset()


def test_the_final_state_is_asked_for_only_when_wanted(fused_ssd_stand_in):
    layer = make(dtype=torch.float32)
    x = rand(2, LENGTH, 16, dtype=torch.float32)
    y = layer(x)
    y.sum().backward()  # training too
    assert fused_ssd_stand_in == [dict(packed=False, final_state=False)]
    fused_ssd_stand_in.clear()
    y_state, _ = layer(x, return_state=True)
    assert fused_ssd_stand_in == [dict(packed=False, final_state=True)]
    torch.testing.assert_close(y_state, y)
    fused_ssd_stand_in.clear()
    segments = Segments.from_seq_idx(packing()[0])
    layer(x, segments=segments)  # packed documents without a state: the fused kernel, with seq_idx
    assert fused_ssd_stand_in == [dict(packed=True, final_state=False)]
    fused_ssd_stand_in.clear()
    layer(x, segments=segments, return_state=True)
    assert fused_ssd_stand_in == [], "it returns no per-sequence states: another backend serves this call"


# -- init and arguments ------------------------------------------------------------------------------
def test_init_and_names():
    torch.manual_seed(0)
    layer = Mamba2(64, d_state=16, headdim=16, ngroups=2, dt_min=0.01, dt_max=0.05, A_init_range=(2.0, 3.0))
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight",
                     "out_proj.weight"}  # mamba-ssm's Mamba2 names
    assert layer.in_proj.weight.shape == (2 * 128 + 2 * 2 * 16 + 8, 64) and layer.conv1d.weight.shape == (192, 1, 4)
    dt = F.softplus(layer.dt_bias)
    assert layer.dt_bias.shape == (8,) and bool((dt >= 0.01 - 1e-6).all() and (dt <= 0.05 + 1e-6).all())
    A = torch.exp(layer.A_log)
    assert bool((A >= 2.0).all() and (A <= 3.0).all())
    assert torch.equal(layer.D, torch.ones(8)) and layer.norm.group_size == 64
    for p in (layer.dt_bias, layer.A_log, layer.D):
        assert p._optim == {"weight_decay": 0.0}  # no weight decay, as mamba-ssm's _no_weight_decay


def test_argument_errors():
    for args, match in [
        (dict(headdim=6), "headdim must divide expand \\* d_model = 32"),
        (dict(headdim=4, ngroups=3), "ngroups must divide the number of heads"),
        (dict(A_init_range=(0.0, 1.0)), "A_init_range must be a pair"),
        (dict(A_init_range=(2.0, 1.0)), "A_init_range"),
        (dict(dt_limit=(-0.1, 1.0)), "dt_limit must be a pair"),
        (dict(dt_limit=(0.1, math.nan)), "dt_limit"),
        (dict(dt_min=0.2, dt_max=0.1), "dt_min <= dt_max"),
        (dict(ssd_backend="nope"), "unknown ssd_backend 'nope'"),
        (dict(causal_conv1d_backend="nope"), "unknown causal_conv1d_backend 'nope'"),
    ]:
        with pytest.raises(ValueError, match=match) as info:
            Mamba2(16, **{"headdim": 4, **args})
        assert "Mamba2" in str(info.value)
    Mamba2(16, headdim=4, dt_limit=[0.0, math.inf])  # a list from a config is a pair too


# -- GPU -------------------------------------------------------------------------------------------------
CUDA = torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["triton", "mamba_ssm"])
def test_gpu_backends_match_the_reference(backend):
    """The layer on CUDA with each GPU SSD backend against the reference backend: outputs, final states and
    every parameter's gradient, float32, with a state in and packed documents."""
    if not ssd_op.dispatch.usable(backend, torch.device("cuda")):
        pytest.skip(f"the {backend} ssd backend is not usable here")
    layer = make(dtype=torch.float32, d_state=16, headdim=8, chunk_size=16).cuda()
    x = rand(2, 100, 16, dtype=torch.float32).cuda()
    results = []
    for name in (backend, "reference"):
        layer.ssd_backend = name
        layer.zero_grad()
        y = layer(x)
        y.square().sum().backward()
        grads = [p.grad.clone() for p in layer.parameters()]
        with torch.no_grad():
            y_state, state = layer(x[:, :37], state=layer.init_state(2), return_state=True)
            documents = Segments.from_seq_idx(torch.arange(100, device="cuda").div(30, rounding_mode="floor")[None]
                                              .expand(2, -1))
            y_packed = layer(x, segments=documents)
        results.append([y, *grads, y_state, *state, y_packed])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_step_equals_forward():
    layer = make(dtype=torch.float32, d_state=16, headdim=8, chunk_size=16).cuda()
    x = rand(2, 64, 16, dtype=torch.float32).cuda()
    with torch.no_grad():
        y, final = layer(x, return_state=True)
        state, outs = layer.init_state(2), []
        for t in range(x.shape[1]):
            y_t, state = layer.step(x[:, t], state)
            outs.append(y_t)
    torch.testing.assert_close(torch.stack(outs, 1), y, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(state[1], final[1], rtol=1e-3, atol=1e-3)


def test_bidirectional_is_two_causal_directions():
    # Without the norm (the gate inside the SSD) and without an out_proj bias, the block is linear after the
    # SSD, so the bidirectional layer is a causal layer with the forward direction's parameters plus the
    # time reversal of one with the backward direction's (sharing in_proj and out_proj).
    torch.manual_seed(0)
    args = dict(d_model=8, d_state=4, d_conv=3, expand=2, headdim=4, ngroups=2, chunk_size=4, rmsnorm=False)
    bi = Mamba2(bidirectional=True, **args).double()
    assert not bi.causal
    with torch.no_grad():
        for p in bi.reverse.parameters():
            p.add_(0.3 * torch.randn_like(p))  # the directions must differ for the test to mean anything
    fwd, bwd = Mamba2(**args).double(), Mamba2(**args).double()
    shared = {k: v for k, v in bi.state_dict().items() if not k.startswith("reverse.")}
    fwd.load_state_dict(shared)
    bwd.load_state_dict({**shared, **{k[len("reverse."):]: v for k, v in bi.state_dict().items()
                                      if k.startswith("reverse.")}})
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(bi(x), fwd(x) + bwd(x.flip(1)).flip(1), rtol=1e-10, atol=1e-10)
    segments = Segments.from_lengths([[4, 7], [11]], 11)  # each document alone, in both directions
    with torch.no_grad():
        y = bi(x, segments=segments)
        for s in segments.spans:
            torch.testing.assert_close(y[s.row:s.row + 1, s.start:s.stop], bi(x[s.row:s.row + 1, s.start:s.stop]),
                                       rtol=1e-10, atol=1e-10)


def test_checkpoints_that_name_the_reverse_direction_backward_still_load():
    torch.manual_seed(0)
    saved = Mamba2(16, d_state=4, headdim=8, bidirectional=True)
    old = {k.replace("reverse.", "backward.", 1): v for k, v in saved.state_dict().items()}  # the name until 0.1.0
    assert any(k.startswith("backward.") for k in old)
    loaded = Mamba2(16, d_state=4, headdim=8, bidirectional=True)
    loaded.load_state_dict(old)
    for name, value in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    with pytest.raises(RuntimeError, match="Unexpected key"):  # a causal layer has no reverse direction to take them
        Mamba2(16, d_state=4, headdim=8).load_state_dict(old)
