"""The stack features the hybrid checkpoints need, each against a literal computation written out here: MLP-alone
blocks (squared ReLU), MLP and µP multipliers, parallel layers, Mamba-2's own D_inner / out_proj bias / in_proj
multipliers, embedding and LM-head multipliers (and that generation's fused decoder does not skip them), shared
transformer blocks with per-use adapters over [x ‖ embedding] (weights stored once, each use its own cache), and
prefill in pieces across attention and Mamba-2."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssmzoo import LanguageModel, Mamba2, Parallel, Segments
from ssmzoo.layers import build
from ssmzoo.models.lm import Block, MLPBlock
from ssmzoo.modules import MLP

F64 = torch.float64
MAMBA2 = dict(d_state=4, d_conv=3, headdim=4, chunk_size=4)
ATTENTION = dict(heads=2, kv_heads=1, rotary_interleaved=False)


def rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / math.sqrt(p.shape[1]))
            elif not name.endswith(("A_log", "dt_bias")):
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def ids(batch=2, length=13, vocab=29, seed=1):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- MLPs ------------------------------------------------------------------------------------------------------
def test_mlp_relu2_multipliers_and_delta():
    mlp = randomize(MLP(6, 5, activation="relu2", gated=False, bias=True, gate_multiplier=0.7,
                        output_multiplier=1.9).double())
    x, delta = torch.randn(3, 6, dtype=F64), torch.randn(3, 5, dtype=F64)
    u = F.linear(x, mlp.up.weight, mlp.up.bias) + delta
    want = 1.9 * F.linear(torch.relu(0.7 * u) ** 2, mlp.down.weight, mlp.down.bias)
    torch.testing.assert_close(mlp(x, up_delta=delta), want)
    gated = randomize(MLP(6, 5, activation="silu", gated=True, bias=False, gate_multiplier=0.7,
                          output_multiplier=1.9).double())
    a, g = F.linear(x, gated.up.weight).chunk(2, -1)
    torch.testing.assert_close(gated(x), 1.9 * F.linear(a * F.silu(0.7 * g), gated.down.weight))
    for bad in (dict(gate_multiplier=math.nan), dict(output_multiplier="2")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MLP(6, 5, **bad)


def test_an_mlp_alone_is_a_block_of_its_own():
    """{"mlp": ...} without a layer is x + MLP(norm(x)) (Nemotron-H's blocks), stateless, in forward and step."""
    model = randomize(LanguageModel(29, 8, pattern=[{"layer": "mamba2", "args": MAMBA2},
                                                    {"mlp": 12, "mlp_gated": False, "mlp_activation": "relu2",
                                                     "mlp_bias": True, "mlp_multipliers": (1.3, 0.6)}],
                                    tie_embeddings=False).double())
    block = model.layers[1]
    assert isinstance(block, MLPBlock) and sorted(n for n, _ in block.named_parameters()) == [
        "mlp.down.bias", "mlp.down.weight", "mlp.up.bias", "mlp.up.weight", "norm.weight"]
    t = ids()
    x = model.embedding(t)
    x = model.layers[0](x, None, False, None, None)[0]
    h = rms(x, block.norm.weight)
    x = x + 0.6 * F.linear(torch.relu(1.3 * F.linear(h, block.mlp.up.weight, block.mlp.up.bias)) ** 2,
                           block.mlp.down.weight, block.mlp.down.bias)
    want = F.linear(rms(x, model.norm_f.weight), model.lm_head.weight)
    torch.testing.assert_close(model(t), want)
    logits, state = model(t[:, :4], return_state=True)
    assert state[1] is None
    steps = [logits]
    for i in range(4, t.shape[1]):
        y, state = model.step(t[:, i], state)
        steps.append(y[:, None])
    torch.testing.assert_close(torch.cat(steps, 1), want)


@pytest.mark.parametrize("entry,match", [
    ({"mlp": 0}, "mlp"), ({"mlp": 8, "norm": False}, "unknown key"), ({"mlp": 8, "args": {}}, "unknown key"),
    ({"mlp": 8, "mlp_multipliers": (1.0,)}, "mlp_multipliers"), ({"mlp": 8, "mlp_multipliers": (1.0, "x")}, "mlp_multipliers"),
    ({"mlp": 8, "mlp_activation": "tanh"}, "activation"), ({"mlp": 8, "shared_block": 0}, "unknown key"),
    ({"layer": "mamba2", "args": MAMBA2, "shared_block": 0}, "shared_block"),
])
def test_bad_entries(entry, match):
    with pytest.raises(ValueError, match=match):
        LanguageModel(29, 8, pattern=[entry])


# -- parallel layers and Mamba-2's options ------------------------------------------------------------------------
def test_parallel_is_the_sum_of_its_layers_with_multipliers():
    layer = randomize(Parallel(8, [{"layer": "mamba2", "args": MAMBA2, "in_multiplier": 0.5, "out_multiplier": 2.0},
                                   {"layer": "attention", "args": ATTENTION, "in_multiplier": 1.5,
                                    "out_multiplier": 0.25}]).double())
    x = torch.randn(2, 9, 8, dtype=F64)
    mamba, attention = layer.layers
    torch.testing.assert_close(layer(x), 2.0 * mamba(0.5 * x) + 0.25 * attention(1.5 * x))
    y, (s_mamba, s_attention) = layer(x, return_state=True)
    torch.testing.assert_close(s_attention.keys, attention(1.5 * x, return_state=True)[1].keys)
    for bad, match in [([], "layers"), ([{"layer": "s4d", "args": {"bidirectional": True}}], "not causal"),
                       ([{"layer": "mamba2", "args": MAMBA2, "in_multiplier": math.inf}], "in_multiplier"),
                       ([{"layer": "mamba2", "extra": 1}], "layers\\[0\\]"), ([{"layer": "nope"}], "nope")]:
        with pytest.raises(ValueError, match=match):
            Parallel(8, bad)


def test_mamba2_in_proj_multipliers_are_a_scaling_of_in_proj():
    """(z, x, B, C, Δ) multipliers equal the same layer with in_proj's rows (and bias) scaled: forward and step."""
    m = (0.5, 1.5, 0.7, 1.3, 0.9)
    args = dict(MAMBA2, d_inner=12, ngroups=1, bias=True, out_proj_bias=False)
    with_multipliers = randomize(Mamba2(8, in_proj_multipliers=m, **args).double())
    folded = Mamba2(8, **args).double()
    folded.load_state_dict(with_multipliers.state_dict())
    d_inner, n = 12, 4
    scale = torch.cat([torch.full((d_inner,), m[0]), torch.full((d_inner,), m[1]), torch.full((n,), m[2]),
                       torch.full((n,), m[3]), torch.full((3,), m[4])]).double()
    with torch.no_grad():
        folded.in_proj.weight.mul_(scale[:, None])
        folded.in_proj.bias.mul_(scale)
    assert folded.out_proj.bias is None and folded.in_proj.bias is not None and folded.nheads == 3
    x = torch.randn(2, 11, 8, dtype=F64)
    torch.testing.assert_close(with_multipliers(x), folded(x))
    unscaled = Mamba2(8, **args).double()
    unscaled.load_state_dict(with_multipliers.state_dict())
    assert not torch.allclose(with_multipliers(x), unscaled(x))  # the multipliers count
    y, state = with_multipliers(x[:, :6], return_state=True)
    y_t, _ = with_multipliers.step(x[:, 6], state)
    torch.testing.assert_close(y_t, folded(x)[:, 6])
    with pytest.raises(ValueError, match="in_proj_multipliers"):
        Mamba2(8, in_proj_multipliers=(1.0, 2.0), **MAMBA2)
    with pytest.raises(ValueError, match="d_inner"):
        Mamba2(8, d_inner=10, **MAMBA2)


# -- the model's multipliers -------------------------------------------------------------------------------------
def test_embedding_and_lm_head_multipliers_in_forward_and_generation(tmp_path):
    """Literal forward; and generation, whose fused Mamba decoder knows no multiplier, must not take it."""
    model = randomize(LanguageModel(29, 8, n_layers=2, layer="mamba", layer_args=dict(d_state=4),
                                    embedding_multiplier=2.5, lm_head_multiplier=0.4))
    plain = LanguageModel(29, 8, n_layers=2, layer="mamba", layer_args=dict(d_state=4))
    plain.load_state_dict(model.state_dict())
    assert model.decode_stack() is None and plain.decode_stack() is not None
    t = ids()
    with torch.no_grad():
        x = 2.5 * model.embedding(t)
        for block in model.layers:
            x = block(x, None, False, None, None)[0]
        want = 0.4 * model.lm_head(model.norm_f(x))
        torch.testing.assert_close(model(t), want, rtol=1e-5, atol=1e-5)
        # the step generate loops over gives the logits of a checked step (a fused decoder would skip the multipliers)
        logits, state = model._prefill(t[:, :5])
        token = logits.argmax(-1)
        torch.testing.assert_close(model._decoder()(token, state)[0], model.step(token, state)[0])
        out = model.generate(t[:, :5], max_new_tokens=6)
        expected = t[:, :5]
        for _ in range(6):  # greedy by whole forwards
            expected = torch.cat([expected, model(expected)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, expected)
    again = LanguageModel.from_pretrained(model.save_pretrained(tmp_path / "out"))  # ssmzoo's own format
    assert again.embedding_multiplier == 2.5 and again.lm_head_multiplier == 0.4


# -- shared blocks ---------------------------------------------------------------------------------------------
SHARED = dict(heads=2, head_dim=8, rotary=True, rotary_base=300.0, scale=0.3, mlp=12, mlp_activation="gelu",
              adapter_rank=2, attention_adapters=True)


def shared_model(**over):
    pattern = [{"layer": "mamba2", "args": MAMBA2, "mlp": 0},
               {"layer": "mamba2", "args": MAMBA2, "mlp": 0, "shared_block": 0},
               {"layer": "attention", "args": ATTENTION, "mlp": 0, "shared_block": 1},
               {"layer": "mamba2", "args": MAMBA2, "mlp": 0, "shared_block": 0}]
    args = dict(vocab_size=29, d_model=8, pattern=pattern, shared_blocks=[dict(SHARED), dict(SHARED, rotary=False)],
                tie_embeddings=False)
    return randomize(LanguageModel(**{**args, **over}).double())


def literal_shared(block, x, e):
    """T(x, e) with the block's use: written out with the modules' weights (no cache, whole sequence)."""
    s, use = block.shared_block, block.shared_use
    a = s.attn
    h = rms(torch.cat([x, e], -1), s.norm.weight)
    qkv = F.linear(h, a.qkv.weight) + torch.cat([F.linear(F.linear(h, ad.down.weight), ad.up.weight)
                                                 for ad in (use.q_adapter, use.k_adapter, use.v_adapter)], -1)
    q, k, v = qkv.split([a.heads * a.head_dim, a.kv_heads * a.head_dim, a.kv_heads * a.head_dim], -1)
    q, k, v = (t.unflatten(-1, (-1, a.head_dim)).transpose(1, 2) for t in (q, k, v))
    n = x.shape[1]
    if a.rotary:
        q, k = a._rotate(q, torch.arange(n)), a._rotate(k, torch.arange(n))
    scores = (q @ k.transpose(-1, -2)) * a.scale
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    y = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
    y = rms(F.linear(y, a.out.weight), s.norm2.weight)
    up = F.linear(y, s.mlp.up.weight) + F.linear(F.linear(y, use.mlp_adapter.down.weight), use.mlp_adapter.up.weight)
    val, gate = up.chunk(2, -1)
    return F.linear(F.linear(val * F.gelu(gate), s.mlp.down.weight), use.proj.weight)


def test_shared_blocks_equal_the_literal_computation():
    model = shared_model()
    t = ids()
    e = x = model.embedding(t)
    for block in model.layers:
        inp = x if block.shared_block is None else x + literal_shared(block, x, e)
        x = x + block.mixer(rms(inp, block.norm.weight))
    want = F.linear(rms(x, model.norm_f.weight), model.lm_head.weight)
    torch.testing.assert_close(model(t), want)


def test_shared_weights_are_stored_once_and_learn_from_every_use():
    model = shared_model()
    names = [n for n, _ in model.named_parameters()]
    assert sum(n.startswith("shared_blocks.0.attn.qkv") for n in names) == 1
    assert not any("shared_block." in n for n in model.state_dict())  # no copy under the using blocks
    assert {n.split(".shared_use.")[0] for n in names if ".shared_use." in n} == {"layers.1", "layers.2", "layers.3"}
    assert model.layers[1].shared_block is model.layers[3].shared_block is model.shared_blocks[0]
    model(ids()).sum().backward()
    grad_both = model.shared_blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    with torch.no_grad():  # the third use's adapters and proj cut: its gradient goes, the first use's stays
        model.layers[3].shared_use.proj.weight.zero_()
    model(ids()).sum().backward()
    assert not torch.allclose(grad_both, model.shared_blocks[0].attn.qkv.weight.grad)
    assert model.shared_blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_shared_blocks_step_prefill_in_pieces_and_packed_documents():
    model = shared_model()
    t = ids(length=17)
    want = model(t)
    logits, state = model(t[:, :6], return_state=True)
    assert isinstance(state[1], tuple) and state[1][1].keys.shape[2] == 6  # (mamba state, this use's cache)
    steps = [logits]
    for i in range(6, t.shape[1]):
        y, state = model.step(t[:, i], state)
        steps.append(y[:, None])
    torch.testing.assert_close(torch.cat(steps, 1), want)
    for layer in model.layers:  # prefill in pieces of 3 tokens across Mamba-2, attention and the shared caches
        layer.mixer.prefill_rows = 6
    last, _ = model._prefill(t)
    torch.testing.assert_close(last, want[:, -1])
    segments = Segments.from_lengths([[5, 1, 11], [17]], 17)
    packed = model(t, segments=segments)
    for s in segments.spans:
        torch.testing.assert_close(packed[s.row:s.row + 1, s.start:s.stop], model(t[s.row:s.row + 1, s.start:s.stop]))


def test_shared_block_arguments_are_checked():
    for shared, match in [([{"heads": 2, "mlp": 8, "d_model": 8}], "d_model"), ([{"heads": 2}], "mlp"),
                          ([{"heads": 2, "mlp": 8, "attention_adapters": True}], "adapter_rank"),
                          ("x", "shared_blocks"), ([{"heads": 2, "mlp": 8, "nope": 1}], "nope")]:
        with pytest.raises(ValueError, match=match):
            LanguageModel(29, 8, pattern=[{"layer": "mamba2", "args": MAMBA2}], shared_blocks=shared)


# -- attention in a stack -----------------------------------------------------------------------------------------
def test_hybrid_prefill_in_pieces_and_generation_equal_forward():
    model = randomize(LanguageModel(29, 8, pattern=[{"layer": "mamba2", "args": MAMBA2, "mlp": 16},
                                                    {"layer": "attention", "args": dict(ATTENTION, rotary_dim=2),
                                                     "mlp": 16},
                                                    {"layer": "parallel", "args": {"layers": [
                                                        {"layer": "mamba2", "args": MAMBA2},
                                                        {"layer": "attention", "args": ATTENTION}]}}]).double())
    assert isinstance(model.layers[2], Block) and model.layers[2].mixer.prefill_rows == 4096
    t = ids(length=19)
    want = model(t)
    for layer in model.layers:
        layer.mixer.prefill_rows = 2 * 5  # pieces of 5 tokens at batch 2
    torch.testing.assert_close(model._prefill(t)[0], want[:, -1])
    out = model.generate(t[:, :4], max_new_tokens=5)
    expected = t[:, :4]
    for _ in range(5):
        expected = torch.cat([expected, model(expected)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, expected)
    assert isinstance(build("attention", d_model=8, heads=2), torch.nn.Module)
