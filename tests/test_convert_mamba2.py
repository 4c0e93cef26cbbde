"""Mamba-2 checkpoints: a Hugging Face Mamba2ForCausalLM (tiny, random weights, built offline) loads into a
LanguageModel whose logits match, over whole sequences and token by token (our O(1) steps against HF's forward
and HF's own cached steps); the same weights under mamba-ssm's names and config load too; and what we write back
in either format is what those loaders (and transformers' from_pretrained) read as the same model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ssmzoo import LanguageModel
from ssmzoo.models.convert_mamba2 import (
    from_hf_mamba2,
    from_mamba_ssm_mamba2,
    load_hf_mamba2,
    load_mamba_ssm_mamba2,
    to_hf_mamba2,
    to_mamba_ssm_mamba2,
)

transformers = pytest.importorskip("transformers")
VOCAB = 37

# (tie the head, groups of B/C, Δ limit); chunk 8 so the 23-token test sequences span three chunks
CASES = [(True, 1, (0.0, math.inf)), (False, 2, (0.0, 0.05))]


def hf_model(tie: bool, ngroups: int, dt_limit, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.Mamba2Config(
        vocab_size=VOCAB, hidden_size=16, num_heads=8, head_dim=4, state_size=4, n_groups=ngroups,
        num_hidden_layers=2, conv_kernel=4, expand=2, chunk_size=8, use_bias=True, use_conv_bias=True,
        time_step_limit=dt_limit, layer_norm_epsilon=1e-5, tie_word_embeddings=tie,
    )
    model = transformers.Mamba2ForCausalLM(config).eval()
    # Random weights everywhere (not the structured init), so a misplaced tensor cannot go unnoticed.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand_like(p) * 4 + 0.5))
            elif name.endswith("dt_bias"):
                p.copy_(torch.randn_like(p) - 3)
            elif name.endswith("norm.weight") or "norm_f" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return model, config


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(tokens, use_cache=False).logits


def tokens(batch=2, length=23, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tie,ngroups,dt_limit", CASES)
def test_hf_logits_match(tie, ngroups, dt_limit):
    model, config = hf_model(tie, ngroups, dt_limit)
    ours = from_hf_mamba2(model).eval()
    assert (ours.lm_head.weight is ours.embedding.weight) == tie
    assert ours.layers[0].mixer.dt_limit == tuple(dt_limit) and ours.layers[0].mixer.ngroups == ngroups
    t = tokens()
    expected = hf_logits(model, t)
    with torch.no_grad():
        torch.testing.assert_close(ours(t), expected, rtol=1e-4, atol=1e-4)
        # a bare state dict with the config object, and config.json's dict through the registry's loader
        torch.testing.assert_close(from_hf_mamba2(model.state_dict(), config)(t), expected, rtol=1e-4, atol=1e-4)
        as_json = json.loads(config.to_json_string())
        torch.testing.assert_close(load_hf_mamba2(as_json, model.state_dict())(t), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tie,ngroups,dt_limit", CASES)
def test_hf_stepping_matches(tie, ngroups, dt_limit):
    """Prefill 5 tokens, then one token at a time: our logits equal HF's forward over the whole sequence at every
    position, and HF's own cached steps. (HF's one-token path does not clamp Δ to time_step_limit, unlike its
    forward, so its steps are compared only where the limit cannot bind; ours follow the forward.)"""
    model, _ = hf_model(tie, ngroups, dt_limit)
    ours = from_hf_mamba2(model).eval()
    t = tokens()
    expected = hf_logits(model, t)
    prefill = 5
    with torch.no_grad():
        logits, state = ours(t[:, :prefill], return_state=True)
        steps = [logits]
        for i in range(prefill, t.shape[1]):
            step_logits, state = ours.step(t[:, i], state)
            steps.append(step_logits[:, None])
        torch.testing.assert_close(torch.cat(steps, 1), expected, rtol=1e-4, atol=1e-4)
        if dt_limit == (0.0, math.inf):
            out = model(t[:, :prefill], use_cache=True)
            cache, theirs = out.cache, [out.logits]
            for i in range(prefill, t.shape[1]):
                out = model(t[:, i : i + 1], cache=cache, use_cache=True)
                cache = out.cache
                theirs.append(out.logits)
            torch.testing.assert_close(torch.cat(steps, 1), torch.cat(theirs, 1), rtol=1e-4, atol=1e-4)


def mamba_ssm_layout(model, config):
    """The HF model's weights under mamba-ssm's MambaLMHeadModel names, with its config.json."""
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in model.state_dict().items()}
    ssm_config = dict(
        d_model=16, d_intermediate=0, n_layer=2, vocab_size=VOCAB,
        ssm_cfg=dict(layer="Mamba2", d_state=4, d_conv=4, expand=2, headdim=4, ngroups=config.n_groups, chunk_size=8,
                     bias=True, conv_bias=True, dt_limit=list(config.time_step_limit), use_mem_eff_path=True),
        rms_norm=True, residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=1,
        tie_embeddings=config.tie_word_embeddings,
    )
    return sd, ssm_config


@pytest.mark.parametrize("tie,ngroups,dt_limit", CASES)
def test_mamba_ssm_layout_loads(tie, ngroups, dt_limit):
    model, config = hf_model(tie, ngroups, dt_limit)
    sd, ssm_config = mamba_ssm_layout(model, config)
    assert "backbone.embedding.weight" in sd and "backbone.layers.1.mixer.norm.weight" in sd
    t = tokens()
    ours = from_mamba_ssm_mamba2(sd, ssm_config)
    with torch.no_grad():
        torch.testing.assert_close(ours(t), hf_logits(model, t), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(load_mamba_ssm_mamba2(ssm_config, sd)(t), hf_logits(model, t), rtol=1e-4, atol=1e-4)


def our_model(tie: bool, **layer_args) -> LanguageModel:
    torch.manual_seed(3)
    model = LanguageModel(VOCAB, 16, 2, layer="mamba2", tie_embeddings=tie,
                          layer_args=dict(d_state=4, headdim=4, ngroups=2, chunk_size=8, **layer_args)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("D", "dt_bias", "norm.weight")):
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("tie,dt_limit", [(True, (0.0, math.inf)), (False, (0.0, 0.2))])
def test_written_hf_checkpoint_is_read_by_transformers(tie, dt_limit, tmp_path):
    from safetensors.torch import save_file

    ours = our_model(tie, dt_limit=dt_limit, bias=True)
    config, state_dict, weights = to_hf_mamba2(ours)
    save_file(state_dict, str(tmp_path / weights), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    theirs = transformers.Mamba2ForCausalLM.from_pretrained(str(tmp_path)).eval()
    t = tokens()
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(theirs, t), ours(t), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(load_hf_mamba2(config, state_dict)(t), ours(t), rtol=0, atol=0)


@pytest.mark.parametrize("layer_args", [{}, dict(D_has_hdim=True, norm_before_gate=True, A_init_range=(1.0, 2.0)),
                                        dict(rmsnorm=False)], ids=["defaults", "hdim-D,norm-first", "no-norm"])
def test_written_mamba_ssm_checkpoint_reads_back(layer_args):
    ours = our_model(False, **layer_args)
    config, state_dict, weights = to_mamba_ssm_mamba2(ours)
    assert weights == "pytorch_model.bin" and config["ssm_cfg"]["layer"] == "Mamba2"
    assert set(state_dict) == {k if k == "lm_head.weight" else "backbone." + k for k in ours.state_dict()}
    back = load_mamba_ssm_mamba2(json.loads(json.dumps(config)), state_dict)
    t = tokens()
    with torch.no_grad():
        torch.testing.assert_close(back(t), ours(t), rtol=0, atol=0)


def test_formats_that_cannot_express_a_model_say_none():
    assert to_hf_mamba2(our_model(True, norm_before_gate=True)) is None  # HF gates before its norm
    assert to_hf_mamba2(our_model(True, D_has_hdim=True)) is None
    assert to_hf_mamba2(our_model(True, norm_eps=1e-6)) is None  # HF has one eps for every norm
    assert to_mamba_ssm_mamba2(our_model(True, norm_eps=1e-6)) is None  # mamba-ssm's is 1e-5
    mamba1 = LanguageModel(VOCAB, 16, 2, layer="mamba", layer_args=dict(d_state=4))
    assert to_hf_mamba2(mamba1) is None and to_mamba_ssm_mamba2(mamba1) is None


def test_conversion_errors():
    model, config = hf_model(True, 1, (0.0, math.inf))
    sd = dict(model.state_dict())
    sd["backbone.layers.0.mixer.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match="extra"):
        from_hf_mamba2(sd, config)
    with pytest.raises(ValueError, match="Mamba2Config"):
        from_hf_mamba2(model.state_dict())
    with pytest.raises(ValueError, match="hidden_act"):
        from_hf_mamba2(model.state_dict(), {**config.to_dict(), "hidden_act": "gelu"})
    sd, ssm_config = mamba_ssm_layout(model, config)
    with pytest.raises(ValueError, match=r"config.json has ssm_cfg.d_state=8, but the weights were made with "
                                         r"ssm_cfg.d_state=4 \(backbone.layers.0.mixer"):
        from_mamba_ssm_mamba2(sd, {**ssm_config, "ssm_cfg": {**ssm_config["ssm_cfg"], "d_state": 8}})
    for bad, match in [({"layer": "Mamba1"}, "Mamba2"), ({"d_ssm": 16}, "d_ssm"), ({"rope": True}, "rope")]:
        with pytest.raises(ValueError, match=match):
            from_mamba_ssm_mamba2(sd, {**ssm_config, "ssm_cfg": {**ssm_config["ssm_cfg"], **bad}})
    with pytest.raises(ValueError, match="d_intermediate"):
        from_mamba_ssm_mamba2(sd, {**ssm_config, "d_intermediate": 64})


def test_from_pretrained_and_save_pretrained_go_through_the_registry(tmp_path):
    # A folder written by transformers loads by its config.json's model_type; save_pretrained writes HF's
    # format back (it can express the model), which transformers reads as the same model.
    theirs, _ = hf_model(False, 2, (0.0, 0.05))
    theirs.save_pretrained(str(tmp_path / "hf"))
    ours = LanguageModel.from_pretrained(tmp_path / "hf")
    t = tokens()
    with torch.no_grad():
        torch.testing.assert_close(ours(t), hf_logits(theirs, t), rtol=1e-4, atol=1e-4)
    ours.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "mamba2"
    again = transformers.Mamba2ForCausalLM.from_pretrained(str(tmp_path / "ours")).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(again, t), ours(t), rtol=1e-4, atol=1e-4)
