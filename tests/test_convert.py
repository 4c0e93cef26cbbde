"""Checkpoints: Hugging Face MambaForCausalLM and mamba-ssm weights give the source model's logits; folders written
with transformers' save_pretrained load offline; our save_pretrained round-trips exactly and writes folders
transformers loads; from_pretrained dispatches on config.json through the converter registry."""

from __future__ import annotations

import json

import pytest
import torch

from ssmzoo.models import LanguageModel
from ssmzoo.models import convert
from ssmzoo.models.convert import checkpoint_format, from_hf_mamba, from_mamba_ssm, register_converter

transformers = pytest.importorskip("transformers")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead


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


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("tie", [True, False])
def test_hf_logits_match(tie):
    model, config = hf_model(tie)
    ours = from_hf_mamba(model).eval()
    assert (ours.lm_head.weight is ours.embedding.weight) == tie
    tokens = torch.randint(0, 37, (2, 23))
    expected = hf_logits(model, tokens)
    torch.testing.assert_close(logits(ours, tokens), expected, rtol=1e-4, atol=1e-4)
    again = from_hf_mamba(model.state_dict(), config)  # a bare state dict with the config works too
    torch.testing.assert_close(logits(again, tokens), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tie", [True, False])
def test_from_pretrained_reads_a_folder_written_by_transformers(tie, tmp_path):
    model, _ = hf_model(tie, seed=2)
    model.save_pretrained(tmp_path)  # config.json (model_type "mamba") + model.safetensors
    ours = LanguageModel.from_pretrained(tmp_path)
    tokens = torch.randint(0, 37, (2, 17))
    torch.testing.assert_close(logits(ours, tokens), hf_logits(model, tokens), rtol=1e-4, atol=1e-4)
    assert not ours.training


@pytest.mark.parametrize("tie", [True, False])
def test_our_mamba_folder_loads_in_transformers(tie, tmp_path):
    torch.manual_seed(3)
    ours = LanguageModel(37, 16, 2, layer="mamba", layer_args=dict(d_state=4, d_conv=3, bias=True),
                         tie_embeddings=tie).eval()
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "mamba"
    theirs = transformers.MambaForCausalLM.from_pretrained(tmp_path).eval()
    tokens = torch.randint(0, 37, (2, 19))
    torch.testing.assert_close(hf_logits(theirs, tokens), logits(ours, tokens), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layer,args,d_intermediate,fmt", [
    ("mamba", dict(d_state=4, d_conv=3, dt_rank=3, expand=3), 0, None),          # Hugging Face layout
    ("mamba", dict(d_state=4, d_conv=3), 128, "mamba_ssm.Mamba1"),               # mamba-ssm, with its MLP
    ("mamba", dict(d_state=4, selective_scan_backend="reference"), 0, None),     # not expressible in HF: ssmzoo
    ("s4d", dict(d_state=4), 24, None),                                           # any other layer: ssmzoo
])
def test_save_then_load_is_exact(layer, args, d_intermediate, fmt, tmp_path):
    torch.manual_seed(4)
    model = LanguageModel(29, 16, 2, layer=layer, layer_args=args, d_intermediate=d_intermediate,
                          tie_embeddings=False).eval()
    with torch.no_grad():
        for p in model.parameters():  # trained-looking weights, not the init
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path, format=fmt)
    config = json.loads((tmp_path / "config.json").read_text())
    expected_format = fmt or ("mamba" if layer == "mamba" and not d_intermediate and "selective_scan_backend" not in args
                              else "ssmzoo")
    assert checkpoint_format(config) == expected_format
    again = LanguageModel.from_pretrained(tmp_path)
    assert same_weights(again, model) and again.config["layer"] == layer
    tokens = torch.randint(0, 29, (2, 9))
    torch.testing.assert_close(logits(again, tokens), logits(model, tokens), rtol=0, atol=0)


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
    torch.testing.assert_close(logits(ours, tokens), hf_logits(model, tokens), rtol=1e-4, atol=1e-4)


def test_sharded_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(5)
    model = LanguageModel(23, 8, 2, layer="mamba", layer_args=dict(d_state=4)).eval()
    model.save_pretrained(tmp_path / "whole")
    config, state_dict, _ = convert.to_hf_mamba(model)
    keys = sorted(state_dict)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    folder = tmp_path / "sharded"
    folder.mkdir()
    for name, part in shards.items():
        save_file({k: state_dict[k] for k in part}, str(folder / name))
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps(config))
    assert same_weights(LanguageModel.from_pretrained(folder), model)


def test_formats_dispatch_through_the_registry(tmp_path, monkeypatch):
    assert checkpoint_format({"model_type": "mamba2"}) == "mamba2"
    assert checkpoint_format({"d_model": 8, "n_layer": 2}) == "mamba_ssm.Mamba1"
    assert checkpoint_format({"d_model": 8, "n_layer": 2, "ssm_cfg": {"layer": "Mamba2"}}) == "mamba_ssm.Mamba2"
    with pytest.raises(ValueError, match="no model_type"):
        checkpoint_format({"hidden_size": 8})
    # a new format is one registration: from_pretrained finds it by model_type
    monkeypatch.setattr(convert, "_CONVERTERS", dict(convert._CONVERTERS))
    built = LanguageModel(5, 8, 1, layer="s4d", layer_args=dict(d_state=4))
    register_converter("toy", lambda config, sd: built)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "toy"}))
    torch.save({}, tmp_path / "pytorch_model.bin")
    assert LanguageModel.from_pretrained(tmp_path) is built
    with pytest.raises(ValueError, match="already registered"):
        register_converter("toy", lambda config, sd: built)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba2"}))
    monkeypatch.delitem(convert._CONVERTERS, "mamba2", raising=False)
    with pytest.raises(ValueError, match="no converter for checkpoint format 'mamba2'; known formats: mamba"):
        LanguageModel.from_pretrained(tmp_path)


def test_conversion_errors(tmp_path):
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
    with pytest.raises(FileNotFoundError, match="not a folder"):
        LanguageModel.from_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        LanguageModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(FileNotFoundError, match="no weights"):
        LanguageModel.from_pretrained(tmp_path)
    s4d = LanguageModel(5, 8, 1, layer="s4d", layer_args=dict(d_state=4))
    with pytest.raises(ValueError, match="cannot express"):
        s4d.save_pretrained(tmp_path / "x", format="mamba")
