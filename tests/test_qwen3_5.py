"""What Qwen3.5 adds to the stack, each against a computation written out here: RMSNorm scaling by (1 + weight),
attention with an output gate and q/k norms (whole sequence, pieces, steps, packed documents), and the model's
norms; then the converter's edges: the published multimodal folders (model_type "qwen3_5", the language model under
model.language_model., the vision tower left out), a config without layer_types, and what it refuses. The exactness
against transformers (logits, steps, 64 greedy tokens, save_pretrained, bf16) is in test_hybrid_checkpoints.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ssmzoo import LanguageModel, Segments
from ssmzoo.layers import build
from ssmzoo.models.convert import converters
from ssmzoo.modules import Attention
from ssmzoo.modules.rmsnorm import RMSNorm

F64 = torch.float64


def randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            scale = 1 / math.sqrt(p.shape[1]) if p.dim() == 2 else 0.3
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def rms_1p(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1 + w)


def rotate_half_partial(x, positions, base, r):
    """transformers' apply_rotary_pos_emb on the first r channels of each head, pairs (i, i + r/2)."""
    freqs = 1.0 / base ** (torch.arange(0, r, 2, dtype=F64) / r)
    angles = positions.to(F64)[:, None] * freqs
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    xr, rest = x[..., :r], x[..., r:]
    half = torch.cat([-xr[..., r // 2:], xr[..., :r // 2]], -1)
    return torch.cat([xr * cos + half * sin, rest], -1)


def gated_attention(a, x, positions=None):
    """Qwen3.5's attention written out: q, k, v, g = x W (one matrix, [q ‖ k ‖ v ‖ g]); q, k RMSNormed per head by
    (1 + weight); partial rotary by halves; causal softmax with grouped KV heads; sigmoid(g) gates the heads'
    output before ``out``."""
    b, n, _ = x.shape
    h, kv, hd = a.heads, a.kv_heads, a.head_dim
    positions = torch.arange(n) if positions is None else positions
    q, k, v, g = F.linear(x, a.qkv.weight, a.qkv.bias).split([h * hd, kv * hd, kv * hd, h * hd], -1)
    q, k, v = (t.reshape(b, n, -1, hd).transpose(1, 2) for t in (q, k, v))
    q, k = rms_1p(q, a.q_norm.weight, a.q_norm.eps), rms_1p(k, a.k_norm.weight, a.k_norm.eps)
    q, k = (rotate_half_partial(t, positions, a.rotary_base, a.rotary_dim) for t in (q, k))
    k, v = k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(positions[None, :] > positions[:, None], -math.inf)
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, h * hd)
    return F.linear(y * torch.sigmoid(g), a.out.weight, a.out.bias)


# -- the parts ---------------------------------------------------------------------------------------------------
def test_rmsnorm_unit_offset():
    x = torch.randn(3, 5, 12, dtype=F64)
    norm = randomize(RMSNorm(12, eps=1e-3, unit_offset=True).double())
    torch.testing.assert_close(norm(x), rms_1p(x, norm.weight, 1e-3))
    grouped = randomize(RMSNorm(12, eps=1e-3, group_size=4, unit_offset=True).double())
    want = rms_1p(x.reshape(3, 5, 3, 4), 0, 1e-3).reshape(3, 5, 12) * (1 + grouped.weight)
    torch.testing.assert_close(grouped(x), want)
    # weight starts at 0: a fresh norm is the plain one with weight 1
    torch.testing.assert_close(RMSNorm(12, unit_offset=True).double()(x), RMSNorm(12).double()(x))
    assert "unit_offset=True" in repr(norm)
    # half precision: 1 + weight in float32, as transformers computes it (folding the 1 into a bf16 weight would
    # round weights below 2^-8 away)
    g = torch.Generator().manual_seed(2)
    half = RMSNorm(64, eps=1e-6, unit_offset=True).to(torch.bfloat16)
    with torch.no_grad():
        half.weight.copy_(0.01 * torch.randn(64, generator=g))
        xb = torch.randn(3, 64, generator=g).to(torch.bfloat16)
        want = rms_1p(xb.float(), half.weight.float(), 1e-6).to(torch.bfloat16)
        folded = rms_1p(xb.float(), (1 + half.weight).float() - 1, 1e-6).to(torch.bfloat16)
        assert torch.equal(half(xb), want) and not torch.equal(folded, want)
    with pytest.raises(ValueError, match="unit_offset"):
        RMSNorm(4, unit_offset=1)


@pytest.mark.parametrize("bias", [False, True])
def test_attention_output_gate_and_qk_norm(bias):
    a = randomize(Attention(16, heads=4, kv_heads=2, head_dim=8, rotary_dim=4, rotary_base=300.0,
                            rotary_interleaved=False, bias=bias, output_gate=True, qk_norm=True, qk_norm_eps=1e-5,
                            qk_norm_unit_offset=True).double())
    assert a.qkv.weight.shape == ((4 + 2 + 2 + 4) * 8, 16) and a.q_norm.weight.shape == (8,)
    x = torch.randn(2, 9, 16, dtype=F64)
    want = gated_attention(a, x)
    torch.testing.assert_close(a(x), want)
    # decoding: the first 4 tokens whole, 3 more in one piece, then one at a time
    keys = values = torch.zeros(2, 2, 0, 8, dtype=F64)
    y1, keys, values = a.extend(x[:, :4], keys, values)
    y2, keys, values = a.extend(x[:, 4:7], keys, values)
    torch.testing.assert_close(torch.cat([y1, y2], 1), want[:, :7])
    _, cache = a(x[:, :7], return_cache=True)
    for i in range(7, 9):
        y, cache = a.step(x[:, i], cache)
        torch.testing.assert_close(y, want[:, i])
    # each part matters: without the gate or the norms the output differs
    plain = Attention(16, heads=4, kv_heads=2, head_dim=8, rotary_dim=4, rotary_base=300.0, rotary_interleaved=False,
                      bias=bias).double()
    with pytest.raises(RuntimeError):
        plain.load_state_dict(a.state_dict())
    for bad in (dict(output_gate=1), dict(qk_norm="yes"), dict(qk_norm_eps=0.0), dict(qk_norm_unit_offset=None)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Attention(16, heads=4, **bad)


def test_attention_layer_gated_paths_agree():
    """The layer's forward, steps and packed documents (the segments fast path) with the gate and q/k norms."""
    layer = randomize(build("attention", d_model=16, heads=4, kv_heads=2, head_dim=8, rotary_dim=4,
                            rotary_interleaved=False, output_gate=True, qk_norm=True, qk_norm_unit_offset=True).double())
    x = torch.randn(1, 10, 16, dtype=F64)
    want = gated_attention(layer.attn, x)
    torch.testing.assert_close(layer(x), want)
    y, state = layer(x[:, :6], return_state=True)
    steps = [y]
    for i in range(6, 10):
        y_t, state = layer.step(x[:, i], state)
        steps.append(y_t[:, None])
    torch.testing.assert_close(torch.cat(steps, 1), want)
    # two packed documents of 4 and 6 tokens: each as if alone
    segments = Segments.from_lengths([[4, 6]], 10)
    packed = layer(x, segments=segments)
    torch.testing.assert_close(packed[:, :4], gated_attention(layer.attn, x[:, :4]))
    torch.testing.assert_close(packed[:, 4:], gated_attention(layer.attn, x[:, 4:]))


def test_language_model_unit_offset_norms():
    """Every block norm and the final norm scale by 1 + weight; the config says so and a saved model comes back."""
    model = LanguageModel(vocab_size=11, d_model=8, pattern=[{"layer": "attention", "args": {"heads": 2},
                                                              "mlp": 12}], norm_unit_offset=True).double()
    randomize(model)
    block = model.layers[0]
    ids = torch.randint(0, 11, (2, 5))
    x = model.embedding(ids)
    x = x + block.mixer(rms_1p(x, block.norm.weight, model.config["norm_eps"]))
    x = x + block.mlp(rms_1p(x, block.norm2.weight, model.config["norm_eps"]))
    want = F.linear(rms_1p(x, model.norm_f.weight, model.config["norm_eps"]), model.lm_head.weight)
    torch.testing.assert_close(model(ids), want)
    assert model.config["norm_unit_offset"] is True
    assert "norm_unit_offset" not in LanguageModel(vocab_size=11, d_model=8, n_layers=1, layer="attention").config


def test_unit_offset_norms_leave_the_fused_mamba_decoder():
    """The fused Mamba decoder reads norm weights as plain scales: with 1 + weight norms generation goes block by
    block, and gives what the model's steps give."""
    model = randomize(LanguageModel(vocab_size=13, d_model=8, n_layers=2, layer="mamba", layer_args={"d_state": 4},
                                    norm_unit_offset=True)).eval()
    stack = model.decode_stack()
    assert type(stack.blocks[0].mixer).lm_step_weights(stack) is None
    prompt = torch.randint(0, 13, (1, 4))
    with torch.no_grad():
        got = model.generate(prompt, max_new_tokens=6)
        logits, state = model(prompt, return_state=True)
        tokens = [logits[:, -1].argmax(-1)]
        for _ in range(5):
            step, state = model.step(tokens[-1], state)
            tokens.append(step.argmax(-1))
    assert torch.equal(got[:, 4:], torch.stack(tokens, 1))


# -- the converter's edges ---------------------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")
TEXT = dict(vocab_size=53, hidden_size=32, intermediate_size=40, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
            linear_key_head_dim=8, linear_value_head_dim=6)


def _random(model, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand_like(p) * 4 + 0.5))
            elif name.endswith("dt_bias"):
                p.copy_(0.5 * torch.randn_like(p) - 2)
            elif p.dim() == 2:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory):
    """A tiny Qwen3_5ForConditionalGeneration (the form Qwen publishes: vision tower, tied head) in a folder."""
    config = transformers.Qwen3_5Config(text_config=TEXT, tie_word_embeddings=True, vision_config=dict(
        depth=1, hidden_size=16, num_heads=2, intermediate_size=16, out_hidden_size=32))
    model = _random(transformers.Qwen3_5ForConditionalGeneration(config))
    folder = tmp_path_factory.mktemp("qwen3_5")
    model.save_pretrained(folder)
    return model, folder


def test_published_multimodal_folder_loads_its_language_model(multimodal, tmp_path):
    hf, folder = multimodal
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen3_5"
    ours = LanguageModel.from_pretrained(folder)
    assert ours.lm_head.weight is ours.embedding.weight  # the top-level tie_word_embeddings counts
    t = torch.randint(0, 53, (2, 17), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = hf(input_ids=t, use_cache=False).logits
        torch.testing.assert_close(ours(t), want, rtol=1e-4, atol=1e-4)
    assert want.abs().max() > 1.0
    # saved back as the text model transformers' Qwen3_5ForCausalLM reads, with the same logits
    out = ours.save_pretrained(tmp_path / "text")
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen3_5_text"
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(t, use_cache=False).logits, want, rtol=1e-5, atol=1e-5)


def test_config_without_layer_types_and_refusals(multimodal):
    hf, folder = multimodal
    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text())
    text = config["text_config"]
    weights = load_file(folder / "model.safetensors")
    load = converters()["qwen3_5"].load
    # transformers' rule: layer i is full attention when (i + 1) % full_attention_interval == 0; the folder has
    # attention at layer 3 only, so interval 4 reads it and interval 2 asks for attention tensors at layer 1
    without = {k: v for k, v in text.items() if k != "layer_types"}
    t = torch.randint(0, 53, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(load({**config, "text_config": {**without, "full_attention_interval": 4}},
                                        weights)(t), hf(input_ids=t, use_cache=False).logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="layers.1.self_attn"):
        load({**config, "text_config": {**without, "full_attention_interval": 2}}, weights)
    with pytest.raises(ValueError, match="no counterpart"):
        load(config, {**weights, "model.language_model.layers.0.extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="layer_types"):
        load({**config, "text_config": {**text, "layer_types": ["linear_attention", "moe", "x", "y"]}}, weights)
    with pytest.raises(ValueError, match="hidden_act"):
        load({**config, "text_config": {**text, "hidden_act": "gelu"}}, weights)
    with pytest.raises(ValueError, match="rotary scaling"):
        load({**config, "text_config": {**text, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4,
                                                                   "factor": 4.0}}}, weights)
    with pytest.raises(ValueError, match="in_proj"):
        load({**config, "text_config": {**text, "linear_num_value_heads": 2}}, weights)


def test_other_formats_refuse_qwen3_5_parts(multimodal, tmp_path):
    """A model with 1 + weight norms or gated attention has no counterpart in the other formats: asking for one
    is an error, and the default format is Qwen3.5's."""
    _, folder = multimodal
    ours = LanguageModel.from_pretrained(folder)
    for name, converter in converters().items():
        if converter.save is not None and name not in ("qwen3_5_text", "ssmzoo"):
            assert converter.save(ours) is None, name
    plain_gated = LanguageModel(vocab_size=11, d_model=8, pattern=[
        {"layer": "mamba2", "args": {"headdim": 4, "d_state": 4, "chunk_size": 4}, "mlp": 8},
        {"layer": "attention", "args": {"heads": 2, "rotary_dim": 2, "rotary_interleaved": False,
                                        "output_gate": True}, "mlp": 8}], norm_eps=1e-5)
    assert converters()["bamba"].save(plain_gated) is None
    with pytest.raises(ValueError):
        ours.save_pretrained(tmp_path / "bamba", format="bamba")
