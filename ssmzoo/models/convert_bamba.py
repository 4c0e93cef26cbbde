"""IBM's Bamba (transformers' ``BambaForCausalLM``, model_type "bamba"; the Granite-4 hybrids share its layout) as a
``LanguageModel``, and back.

Every layer is a pre-norm block of a Mamba-2 mixer or, at ``attn_layer_indices``, grouped-query attention with a
rotary embedding on half of each head (by halves), followed by a SwiGLU MLP block:

    transformers (BambaForCausalLM)                         ssmzoo (LanguageModel)
    model.embed_tokens.weight                               embedding.weight
    model.layers.{i}.input_layernorm.weight                 layers.{i}.norm.weight
    model.layers.{i}.mamba.*                                layers.{i}.mixer.*            (Mamba2, same names)
    model.layers.{i}.self_attn.{q,k,v}_proj / o_proj        layers.{i}.mixer.attn.qkv / out (FullAttention)
    model.layers.{i}.pre_ff_layernorm.weight                layers.{i}.norm2.weight
    model.layers.{i}.feed_forward.{gate,up}_proj / down     layers.{i}.mlp.up = [up ‖ gate] / down
    model.final_layernorm.weight                            norm_f.weight
    lm_head.weight                                          lm_head.weight

One ``rms_norm_eps`` for every norm (the gated one inside Mamba-2 too). Pass a state dict (or a module) and its
config object or config.json's dict; transformers is not imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..layers.attention import FullAttention
from ..layers.mamba2 import Mamba2
from .hf_hybrid import (Tensors, activation, attention_in, attention_layout, attention_out, bamba_mamba2_args,
                        bamba_mamba2_config, build_loaded, config_head, config_of, gated_mlp_in, gated_mlp_out, get,
                        has_qwen3_5_parts, is_mamba_ssm_mixer, mamba2_in, mamba2_layout, mamba2_out, mlp_layout, one,
                        put_ends, rope, saved, state_dict_of, take_ends, tied)
from .lm import Block, LanguageModel

PREFIXES = ("model.",)


def bamba_pattern(config: Any, fn: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(our pattern, the other LanguageModel arguments) of a BambaConfig."""
    d = get(config, "hidden_size")
    n_layers = get(config, "num_hidden_layers")
    eps = get(config, "rms_norm_eps", 1e-5)
    heads = get(config, "num_attention_heads")
    head_dim = get(config, "head_dim", d // heads)
    theta, partial = rope(config, fn, default_partial=0.5)
    mamba = bamba_mamba2_args(config, d, get(config, "mamba_expand", 2) * d, eps, fn)
    attention = dict(heads=heads, kv_heads=get(config, "num_key_value_heads", heads), head_dim=head_dim,
                     rotary=True, rotary_base=theta, rotary_dim=int(head_dim * partial), rotary_interleaved=False,
                     bias=bool(get(config, "attention_bias", False)))
    mlp = dict(mlp=get(config, "intermediate_size"), mlp_gated=True, mlp_bias=bool(get(config, "mlp_bias", False)),
               mlp_activation=activation(get(config, "hidden_act", "silu"), fn, "hidden_act"))
    attn_layers = set(get(config, "attn_layer_indices", []) or [])
    pattern = [dict({"layer": "attention", "args": attention} if i in attn_layers else {"layer": "mamba2", "args": mamba},
                    **mlp) for i in range(n_layers)]
    return pattern, dict(d_model=d, norm_eps=eps, tie_embeddings=bool(get(config, "tie_word_embeddings", False)))


def from_hf_bamba(model_or_state_dict: nn.Module | Mapping[str, Tensor], config: Any = None) -> LanguageModel:
    """A ``LanguageModel`` with the weights of transformers' ``BambaForCausalLM``; config: its ``BambaConfig`` (or
    config.json's dict), taken from the model if omitted."""
    fn = "from_hf_bamba"
    config = config_of(model_or_state_dict, config, fn, "BambaConfig")
    pattern, args = bamba_pattern(config, fn)
    t = Tensors(state_dict_of(model_or_state_dict, fn), fn, PREFIXES)
    sd = take_ends(t, "embed_tokens.weight", "final_layernorm.weight")
    for i, entry in enumerate(pattern):
        theirs, ours = f"layers.{i}.", f"layers.{i}."
        sd[ours + "norm.weight"] = t.take(theirs + "input_layernorm.weight")
        sd[ours + "norm2.weight"] = t.take(theirs + "pre_ff_layernorm.weight")
        if entry["layer"] == "attention":
            attention_in(t, theirs + "self_attn.", ours + "mixer.attn.", sd)
        else:
            mamba2_in(t, theirs + "mamba.", ours + "mixer.", sd)
        gated_mlp_in(t, theirs + "feed_forward.", ours + "mlp.", sd)
    return build_loaded(fn, t, sd, pattern, args)


def load_hf_bamba(config: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> LanguageModel:
    """The registry's loader for format "bamba" (config.json's model_type): config.json as a dict."""
    return from_hf_bamba(state_dict, config)


def to_hf_bamba(model: LanguageModel) -> tuple[dict[str, Any], dict[str, Tensor], str] | None:
    """(config.json, state dict, "model.safetensors") of ``model`` as transformers' ``BambaForCausalLM``, or None
    when it has no counterpart there."""
    if has_qwen3_5_parts(model):
        return None
    blocks = list(model.layers)
    if (model.embedding_multiplier != 1.0 or model.lm_head_multiplier != 1.0 or len(model.shared_blocks)
            or not all(isinstance(b, Block) and b.shared_block is None and b.norm is not None and b.mlp is not None
                       for b in blocks)):
        return None
    eps = model.norm_f.eps
    mixers = [b.mixer for b in blocks]
    mambas = [m for m in mixers if isinstance(m, Mamba2)]
    attns = [m for m in mixers if isinstance(m, FullAttention)]
    mlps = [b.mlp for b in blocks]
    mamba, attn = one([mamba2_layout(m) for m in mambas]), one([attention_layout(a) for a in attns])
    mlp = one([mlp_layout(m) for m in mlps])
    if (len(mambas) + len(attns) != len(blocks) or not mambas or mlp is None or (mambas and mamba is None)
            or (attns and attn is None) or not mlp["gated"] or mlp["multipliers"] != (1.0, 1.0)
            or any(b.norm.eps != eps or b.norm2.eps != eps for b in blocks)):
        return None
    d = model.d_model
    if mamba["d_inner"] % d or not is_mamba_ssm_mixer(mamba, eps):
        return None
    if attn is not None and (not attn["rotary"] or attn["interleaved"] or attn["scale"] is not None
                             or attn["bias"] != attn["out_bias"] or attn["rotary_dim"] != int(attn["head_dim"] * 0.5)):
        return None  # transformers' Bamba fixes a rotary on half of each head, by halves
    config: dict[str, Any] = {
        **config_head(model, "BambaForCausalLM", "bamba"), "num_hidden_layers": len(blocks),
        "intermediate_size": mlp["hidden"], "hidden_act": mlp["activation"], "mlp_bias": mlp["bias"],
        "rms_norm_eps": eps,
        "tie_word_embeddings": tied(model),
        "attn_layer_indices": [i for i, m in enumerate(mixers) if isinstance(m, FullAttention)],
        **bamba_mamba2_config(mamba), "mamba_expand": mamba["d_inner"] // d, "use_cache": True,
    }
    if attn is not None:
        config.update(num_attention_heads=attn["heads"], num_key_value_heads=attn["kv_heads"],
                      attention_bias=attn["bias"],
                      rope_parameters={"rope_type": "default", "rope_theta": attn["rotary_base"],
                                       "partial_rotary_factor": 0.5})
        if attn["head_dim"] != d // attn["heads"]:
            config["head_dim"] = attn["head_dim"]
    ours = model.state_dict()
    sd = put_ends(model, ours, "model.embed_tokens.weight", "model.final_layernorm.weight")
    for i, m in enumerate(mixers):
        prefix, theirs = f"layers.{i}.", f"model.layers.{i}."
        sd[theirs + "input_layernorm.weight"] = ours[prefix + "norm.weight"]
        sd[theirs + "pre_ff_layernorm.weight"] = ours[prefix + "norm2.weight"]
        if isinstance(m, FullAttention):
            attention_out(ours, prefix + "mixer.attn.", m.attn, theirs + "self_attn.", sd)
        else:
            mamba2_out(ours, prefix + "mixer.", theirs + "mamba.", sd)
        gated_mlp_out(ours, prefix + "mlp.", theirs + "feed_forward.", sd)
    return saved(config, sd)


__all__ = ["bamba_pattern", "from_hf_bamba", "load_hf_bamba", "to_hf_bamba"]
