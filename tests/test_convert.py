"""Loading Hugging Face MambaForCausalLM and mamba-ssm checkpoints: logits match the source model."""

from __future__ import annotations

import pytest
import torch

from ssmzoo.models.convert import from_hf_mamba, from_mamba_ssm

transformers = pytest.importorskip("transformers")


def hf_model(tie: bool, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.MambaConfig(
        vocab_size=37, hidden_size=16, state_size=4, num_hidden_layers=2, conv_kernel=4, expand=2,
        use_bias=True, use_conv_bias=True, tie_word_embeddings=tie, use_mambapy=False, use_cache=False,
    )
    model = transformers.MambaForCausalLM(config).eval()
    # Random weights everywhere (not the structured init), so a misplaced tensor cannot go unnoticed.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand_like(p) * 4 + 0.5))
            elif name.endswith("dt_proj.bias"):
                p.copy_(torch.randn_like(p) - 3)
            else:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("norm.weight") or "norm_f" in name else 0.0))
    return model, config


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("tie", [True, False])
def test_hf_logits_match(tie):
    model, config = hf_model(tie)
    ours = from_hf_mamba(model).eval()
    assert (ours.lm_head.weight is ours.embedding.weight) == tie
    tokens = torch.randint(0, 37, (2, 23))
    expected = hf_logits(model, tokens)
    with torch.no_grad():
        got = ours(tokens)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # a bare state dict with the config works too
    again = from_hf_mamba(model.state_dict(), config)
    torch.testing.assert_close(again(tokens).detach(), expected, rtol=1e-4, atol=1e-4)


def test_mamba_ssm_keys():
    """mamba-ssm's MambaLMHeadModel names: backbone.embedding, backbone.layers.N.{norm,mixer}, norm_f, lm_head."""
    model, _ = hf_model(tie=True, seed=1)
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in model.state_dict().items()}
    assert "backbone.embedding.weight" in sd and "backbone.layers.1.mixer.A_log" in sd
    ssm_config = dict(
        d_model=16, d_intermediate=0, n_layer=2, vocab_size=37,
        ssm_cfg=dict(d_state=4, d_conv=4, expand=2, bias=True, conv_bias=True),
        rms_norm=True, residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=1, tie_embeddings=True,
    )
    ours = from_mamba_ssm(sd, ssm_config)
    tokens = torch.randint(0, 37, (2, 9))
    torch.testing.assert_close(ours(tokens).detach(), hf_logits(model, tokens), rtol=1e-4, atol=1e-4)


def test_conversion_errors():
    model, config = hf_model(tie=True)
    sd = dict(model.state_dict())
    sd["backbone.layers.0.mixer.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match="extra"):
        from_hf_mamba(sd, config)
    with pytest.raises(ValueError, match="MambaConfig"):
        from_hf_mamba(model.state_dict())
    with pytest.raises(ValueError, match="rms_norm"):
        from_mamba_ssm({}, dict(d_model=16, n_layer=2, rms_norm=False))
    with pytest.raises(ValueError, match="Mamba1"):
        from_mamba_ssm({}, dict(d_model=16, n_layer=2, ssm_cfg=dict(layer="Mamba2")))
