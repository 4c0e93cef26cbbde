"""The hybrid checkpoints transformers runs — Bamba, Nemotron-H, Falcon-H1, Zamba2, Qwen3.5 — built tiny with random weights
(offline, ``from_config``), saved to a folder and loaded by ``LanguageModel.from_pretrained``: the logits equal
transformers' (float32, 1e-4), our prefill + steps give its logits at every position, greedy generation of 64
tokens gives the tokens of its cached ``generate``, what ``save_pretrained`` writes is the same model to
transformers, and bf16 weights load and generate."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from ssmzoo import LanguageModel
from ssmzoo.models.convert import checkpoint_format, converters
from ssmzoo.models.convert_zamba2 import from_hf_zamba2

transformers = pytest.importorskip("transformers")
VOCAB = 61


def _bamba(**over):
    args = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=8, mamba_d_state=8, mamba_n_groups=2,
                mamba_chunk_size=8, mamba_d_conv=4, rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                                                     "partial_rotary_factor": 0.5})
    return transformers.BambaConfig(**{**args, **over})


def _nemotron_h(**over):
    # D_inner = 8 heads x 6 = 48, not expand x hidden; attention without positions; squared-ReLU MLP blocks
    args = dict(vocab_size=VOCAB, hidden_size=32, layers_block_type=["linear_attention", "mlp", "full_attention",
                                                                     "mlp", "linear_attention"],
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=40, ssm_state_size=8,
                mamba_num_heads=8, mamba_head_dim=6, n_groups=2, chunk_size=8)
    return transformers.NemotronHConfig(**{**args, **over})


def _falcon_h1(**over):
    args = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, mamba_d_ssm=48, mamba_n_heads=8, mamba_d_state=8, mamba_chunk_size=8,
                rope_parameters={"rope_type": "default", "rope_theta": 700.0})
    return transformers.FalconH1Config(**{**args, **over})


def _zamba2(**over):
    args = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=5, intermediate_size=48,
                layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "hybrid"], num_attention_heads=4,
                mamba_d_state=8, n_mamba_heads=4, chunk_size=8, num_mem_blocks=2, use_shared_attention_adapter=True,
                adapter_rank=4, use_mem_rope=True, rope_parameters={"rope_type": "default", "rope_theta": 300.0})
    return transformers.Zamba2Config(**{**args, **over})


def _qwen3_5(**over):
    # Gated DeltaNet (2 key heads, 4 value heads) and gated attention with q/k norms and a quarter-head rotary
    args = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
                linear_key_head_dim=8, linear_value_head_dim=6, linear_conv_kernel_dim=3,
                layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
                rope_parameters={"rope_type": "default", "rope_theta": 800.0, "partial_rotary_factor": 0.25})
    return transformers.Qwen3_5TextConfig(**{**args, **over})


CASES = {
    "bamba": lambda: _bamba(),
    "bamba-tied-biases": lambda: _bamba(tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                                        mamba_proj_bias=True, mamba_conv_bias=False, time_step_limit=(0.0, 0.5)),
    "nemotron_h": lambda: _nemotron_h(),
    "nemotron_h-pattern-string": lambda: _nemotron_h(layers_block_type=None, hybrid_override_pattern="M*-M",
                                                     use_bias=True, mlp_bias=True, tie_word_embeddings=True),
    "falcon_h1": lambda: _falcon_h1(),
    # every µP multiplier away from 1, the gated norm (grouped, after the gate), both biases apart
    "falcon_h1-mup": lambda: _falcon_h1(
        embedding_multiplier=1.7, lm_head_multiplier=0.6, mlp_multipliers=[0.8, 1.3], key_multiplier=0.7,
        attention_in_multiplier=0.9, attention_out_multiplier=1.4, ssm_in_multiplier=1.2, ssm_out_multiplier=0.8,
        ssm_multipliers=[0.5, 1.5, 0.7, 1.3, 0.9], mamba_rms_norm=True, mamba_norm_before_gate=False,
        mamba_n_groups=2, mamba_proj_bias=True, projectors_bias=False, attention_bias=True),
    "zamba2": lambda: _zamba2(),
    "zamba2-one-block-no-rope": lambda: _zamba2(num_mem_blocks=1, use_shared_attention_adapter=False,
                                                use_mem_rope=False, add_bias_linear=True, tie_word_embeddings=False),
    "qwen3_5_text": lambda: _qwen3_5(),
    # layer types from full_attention_interval, tied head, attention biases, half-head rotary, as many value heads
    # as key heads
    "qwen3_5_text-interval-tied-bias": lambda: _qwen3_5(
        layer_types=None, full_attention_interval=2, tie_word_embeddings=True, attention_bias=True,
        linear_num_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                                   "partial_rotary_factor": 0.5}),
}


def hf_model(case: str, seed: int = 0):
    """A tiny transformers model with random weights everywhere (not its structured init), so that a misplaced
    tensor cannot go unnoticed: weights N(0, 1/fan_in), norms near 1, Δ biases near softplus⁻¹(0.13)."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(CASES[case]()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand_like(p) * 4 + 0.5))
            elif name.endswith("dt_bias"):
                p.copy_(0.5 * torch.randn_like(p) - 2)
            elif "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif p.dim() == 2:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """case -> (transformers model, its folder), built once per case."""
    cache = {}

    def get(case):
        if case not in cache:
            model = hf_model(case)
            folder = tmp_path_factory.mktemp(case)
            model.save_pretrained(folder)
            cache[case] = model, folder
        return cache[case]

    return get


def tokens(batch=2, length=21, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def hf_logits(model, t):
    with torch.no_grad():
        return model(t, use_cache=False).logits.float()


@pytest.mark.parametrize("case", CASES)
def test_logits_equal_transformers(case, saved):
    hf, folder = saved(case)
    ours = LanguageModel.from_pretrained(folder)
    assert checkpoint_format(json.loads((folder / "config.json").read_text())) == case.split("-")[0]
    t = tokens()
    want = hf_logits(hf, t)
    with torch.no_grad():
        got = ours(t)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert want.abs().max() > 1.0  # the logits are not all near zero (the comparison means something)


@pytest.mark.parametrize("case", CASES)
def test_steps_and_greedy_generation_equal_transformers(case, saved):
    """Prefill 5 tokens, then our one-token steps: the logits at every position equal transformers' forward;
    greedy generation of 64 tokens (our prefill + decoder) gives the tokens of transformers' cached generate."""
    hf, folder = saved(case)
    ours = LanguageModel.from_pretrained(folder)
    t = tokens(length=16)
    want = hf_logits(hf, t)
    with torch.no_grad():
        logits, state = ours(t[:, :5], return_state=True)
        steps = [logits]
        for i in range(5, t.shape[1]):
            step_logits, state = ours.step(t[:, i], state)
            steps.append(step_logits[:, None])
    torch.testing.assert_close(torch.cat(steps, 1), want, rtol=1e-4, atol=1e-4)
    prompt = t[:, :7]
    expected = hf.generate(prompt, max_new_tokens=64, min_new_tokens=64, do_sample=False, eos_token_id=None,
                           pad_token_id=0)
    got = ours.generate(prompt, max_new_tokens=64)
    assert got.shape == (2, 7 + 64)
    assert torch.equal(got, expected), (got[:, 7:] != expected[:, 7:]).nonzero()[:3]


@pytest.mark.parametrize("case", CASES)
def test_save_pretrained_is_the_same_model_to_transformers(case, saved, tmp_path):
    hf, folder = saved(case)
    ours = LanguageModel.from_pretrained(folder)
    out = ours.save_pretrained(tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == case.split("-")[0]
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(back) is type(hf)
    t = tokens()
    torch.testing.assert_close(hf_logits(back, t), hf_logits(hf, t), rtol=1e-6, atol=1e-6)
    # every tensor went back under its own name (the tied ones once), and we read the folder back as ourselves
    ours_again = LanguageModel.from_pretrained(out)
    for (k, a), (_, b) in zip(ours.state_dict().items(), ours_again.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("case", ["bamba", "nemotron_h", "falcon_h1-mup", "zamba2", "qwen3_5_text"])
def test_bf16_weights_load_and_generate(case, saved):
    hf, folder = saved(case)
    ours = LanguageModel.from_pretrained(folder, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    t = tokens()
    with torch.no_grad():
        got = ours(t).float()
    want = hf_logits(hf, t)
    # Rounding to bf16 costs what it costs transformers' own bf16 model (same weights, same precision), not more.
    theirs = hf_logits(copy.deepcopy(hf).to(torch.bfloat16), t)
    assert (got - want).abs().mean() <= 1.5 * (theirs - want).abs().mean()
    assert (got - want).abs().max() <= 2 * (theirs - want).abs().max()
    ids = ours.generate(t[:, :5], max_new_tokens=12)
    assert ids.shape == (2, 17) and ids.dtype == torch.long and bool((ids[:, :5] == t[:, :5]).all())


def test_converters_are_registered():
    for name in ("bamba", "nemotron_h", "falcon_h1", "zamba2", "qwen3_5_text"):
        assert converters()[name].save is not None


def test_zamba2_state_dict_with_every_tied_copy(saved):
    """A model's own state dict holds the shared block under every use; the copies load if they agree, and a
    differing copy (untied uses) is refused."""
    hf, _ = saved("zamba2")
    sd = hf.state_dict()
    assert any(k.startswith("model.layers.4.shared_transformer.") for k in sd)  # the third use's copy
    t = tokens()
    with torch.no_grad():
        torch.testing.assert_close(from_hf_zamba2(hf)(t), hf_logits(hf, t), rtol=1e-4, atol=1e-4)
    sd = {k: v.clone() for k, v in sd.items()}
    sd["model.layers.4.shared_transformer.pre_ff_layernorm.weight"] += 1.0
    with pytest.raises(ValueError, match="not tied"):
        from_hf_zamba2(sd, hf.config)


def test_what_cannot_be_matched_is_refused(saved, tmp_path):
    hf, folder = saved("bamba")
    config = json.loads((folder / "config.json").read_text())
    from safetensors.torch import load_file

    weights = load_file(folder / "model.safetensors")
    load = converters()["bamba"].load
    with pytest.raises(ValueError, match="'layers.0.mamba.D'"):
        load(config, {k: v for k, v in weights.items() if not k.endswith("layers.0.mamba.D")})
    with pytest.raises(ValueError, match="no counterpart"):
        load(config, {**weights, "model.layers.0.extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="rotary scaling"):
        load({**config, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, weights)
    nemotron = json.loads(CASES["nemotron_h"]().to_json_string())
    with pytest.raises(ValueError, match="mixture-of-experts"):
        converters()["nemotron_h"].load({**nemotron, "layers_block_type": ["linear_attention", "moe"]}, {})
