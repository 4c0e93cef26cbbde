"""TII's Falcon-H1 (transformers' ``FalconH1ForCausalLM``, model_type "falcon_h1") as a ``LanguageModel``, and back.

Every layer is one block: its normalised input goes both to a Mamba-2 mixer and to grouped-query attention
(full rotary, by halves) and their outputs are added (our ``parallel`` layer), then a SwiGLU MLP block. Its µP
multipliers, as transformers applies them, are the stack's:

    embedding_multiplier                 LanguageModel(embedding_multiplier=...)
    lm_head_multiplier                   LanguageModel(lm_head_multiplier=...)
    ssm_in_multiplier, ssm_out_multiplier            parallel: the Mamba-2 layer's in_multiplier, out_multiplier
    attention_in_multiplier, attention_out_multiplier   parallel: the attention's in_multiplier, out_multiplier
    ssm_multipliers (z, x, B, C, Δ parts of in_proj)     Mamba2(in_proj_multipliers=...)
    key_multiplier (on the keys)          the attention's softmax scale: key_multiplier / sqrt(head_dim) (the same
                                          scores: q · (m k) / √d = (q · k) · m / √d)
    mlp_multipliers (gate, down)          the block's mlp_multipliers

    transformers (FalconH1ForCausalLM)                      ssmzoo (LanguageModel)
    model.embed_tokens.weight                               embedding.weight
    model.layers.{i}.input_layernorm.weight                 layers.{i}.norm.weight
    model.layers.{i}.mamba.*                                layers.{i}.mixer.layers.0.*  (Mamba2, same names)
    model.layers.{i}.self_attn.{q,k,v}_proj / o_proj        layers.{i}.mixer.layers.1.attn.qkv / out
    model.layers.{i}.pre_ff_layernorm.weight                layers.{i}.norm2.weight
    model.layers.{i}.feed_forward.{gate,up}_proj / down     layers.{i}.mlp.up = [up ‖ gate] / down
    model.final_layernorm.weight                            norm_f.weight
    lm_head.weight                                          lm_head.weight

The Mamba-2 mixer's channels are ``mamba_d_ssm`` (else expand · hidden); its gated norm is optional
(``mamba_rms_norm``; grouped by ``mamba_n_groups``, the gate before or after it), else y · SiLU(z); in_proj's
bias is ``mamba_proj_bias``, out_proj's ``projectors_bias``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..layers.attention import FullAttention
from ..layers.mamba2 import Mamba2
from ..layers.parallel import Parallel
from .hf_hybrid import (Tensors, activation, attention_in, attention_layout, attention_out, bamba_mamba2_args,
                        bamba_mamba2_config, build_loaded, config_head, config_of, gated_mlp_in, gated_mlp_out, get,
                        has_qwen3_5_parts, mamba2_in, mamba2_layout, mamba2_out, mlp_layout, one, put_ends, rope,
                        saved, state_dict_of, take_ends, tied)
from .lm import Block, LanguageModel

PREFIXES = ("model.",)


def falcon_h1_pattern(config: Any, fn: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(our pattern, the other LanguageModel arguments) of a FalconH1Config."""
    d = get(config, "hidden_size")
    eps = get(config, "rms_norm_eps", 1e-5)
    heads = get(config, "num_attention_heads")
    head_dim = get(config, "head_dim", d // heads)
    d_ssm = get(config, "mamba_d_ssm") or get(config, "mamba_expand", 2) * d
    theta, partial = rope(config, fn)
    if partial != 1.0:
        raise ValueError(f"{fn}: transformers' Falcon-H1 rotates whole heads; partial_rotary_factor={partial}")
    ssm_multipliers = get(config, "ssm_multipliers", [1.0] * 5)
    mamba = bamba_mamba2_args(config, d, d_ssm, eps, fn, out_proj_bias=bool(get(config, "projectors_bias", False)),
                              rmsnorm=bool(get(config, "mamba_rms_norm", False)),
                              norm_before_gate=bool(get(config, "mamba_norm_before_gate", True)))
    if any(float(m) != 1.0 for m in ssm_multipliers):
        mamba["in_proj_multipliers"] = tuple(float(m) for m in ssm_multipliers)
    key_multiplier = float(get(config, "key_multiplier", 1.0))
    attention = dict(heads=heads, kv_heads=get(config, "num_key_value_heads", heads), head_dim=head_dim, rotary=True,
                     rotary_base=theta, rotary_interleaved=False, bias=bool(get(config, "attention_bias", False)))
    if key_multiplier != 1.0:
        attention["scale"] = key_multiplier / math.sqrt(head_dim)
    layers = [{"layer": "mamba2", "args": mamba, "in_multiplier": float(get(config, "ssm_in_multiplier", 1.0)),
               "out_multiplier": float(get(config, "ssm_out_multiplier", 1.0))},
              {"layer": "attention", "args": attention,
               "in_multiplier": float(get(config, "attention_in_multiplier", 1.0)),
               "out_multiplier": float(get(config, "attention_out_multiplier", 1.0))}]
    gate, down = get(config, "mlp_multipliers", [1.0, 1.0])
    block = {"layer": "parallel", "args": {"layers": layers}, "mlp": get(config, "intermediate_size"),
             "mlp_gated": True, "mlp_bias": bool(get(config, "mlp_bias", False)),
             "mlp_activation": activation(get(config, "hidden_act", "silu"), fn, "hidden_act"),
             "mlp_multipliers": (float(gate), float(down)), "repeat": get(config, "num_hidden_layers")}
    return [block], dict(d_model=d, norm_eps=eps, tie_embeddings=bool(get(config, "tie_word_embeddings", False)),
                         embedding_multiplier=float(get(config, "embedding_multiplier", 1.0)),
                         lm_head_multiplier=float(get(config, "lm_head_multiplier", 1.0)))


def from_hf_falcon_h1(model_or_state_dict: nn.Module | Mapping[str, Tensor], config: Any = None) -> LanguageModel:
    """A ``LanguageModel`` with the weights of transformers' ``FalconH1ForCausalLM``; config: its ``FalconH1Config``
    (or config.json's dict), taken from the model if omitted."""
    fn = "from_hf_falcon_h1"
    config = config_of(model_or_state_dict, config, fn, "FalconH1Config")
    pattern, args = falcon_h1_pattern(config, fn)
    t = Tensors(state_dict_of(model_or_state_dict, fn), fn, PREFIXES)
    sd = take_ends(t, "embed_tokens.weight", "final_layernorm.weight")
    for i in range(pattern[0]["repeat"]):
        theirs, ours = f"layers.{i}.", f"layers.{i}."
        sd[ours + "norm.weight"] = t.take(theirs + "input_layernorm.weight")
        sd[ours + "norm2.weight"] = t.take(theirs + "pre_ff_layernorm.weight")
        mamba2_in(t, theirs + "mamba.", ours + "mixer.layers.0.", sd)
        attention_in(t, theirs + "self_attn.", ours + "mixer.layers.1.attn.", sd)
        gated_mlp_in(t, theirs + "feed_forward.", ours + "mlp.", sd)
    return build_loaded(fn, t, sd, pattern, args)


def load_hf_falcon_h1(config: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> LanguageModel:
    """The registry's loader for format "falcon_h1": config.json as a dict."""
    return from_hf_falcon_h1(state_dict, config)


def to_hf_falcon_h1(model: LanguageModel) -> tuple[dict[str, Any], dict[str, Tensor], str] | None:
    """(config.json, state dict, "model.safetensors") of ``model`` as transformers' ``FalconH1ForCausalLM``, or None
    when it has no counterpart there."""
    if has_qwen3_5_parts(model):
        return None
    blocks = list(model.layers)
    if len(model.shared_blocks) or not all(
            isinstance(b, Block) and b.shared_block is None and b.norm is not None and b.mlp is not None
            and isinstance(b.mixer, Parallel) and len(b.mixer.layers) == 2
            and isinstance(b.mixer.layers[0], Mamba2) and isinstance(b.mixer.layers[1], FullAttention)
            for b in blocks):
        return None
    eps = model.norm_f.eps
    mamba = one([mamba2_layout(b.mixer.layers[0]) for b in blocks])
    attn = one([attention_layout(b.mixer.layers[1]) for b in blocks])
    multipliers = one([{"in": b.mixer.in_multipliers, "out": b.mixer.out_multipliers} for b in blocks])
    mlp = one([mlp_layout(b.mlp) for b in blocks])
    if (mamba is None or attn is None or multipliers is None or mlp is None or not mlp["gated"]
            or any(b.norm.eps != eps or b.norm2.eps != eps for b in blocks)):
        return None
    if (mamba["D_has_hdim"] or (mamba["rmsnorm"] and mamba["norm_eps"] != eps) or not mamba["causal"]
            or mamba["nheads"] * mamba["headdim"] != mamba["d_inner"]):
        return None
    if not attn["rotary"] or attn["interleaved"] or attn["rotary_dim"] != attn["head_dim"] \
            or attn["bias"] != attn["out_bias"]:
        return None
    scale = attn["scale"] if attn["scale"] is not None else 1 / math.sqrt(attn["head_dim"])
    config: dict[str, Any] = {
        **config_head(model, "FalconH1ForCausalLM", "falcon_h1"), "num_hidden_layers": len(blocks),
        "intermediate_size": mlp["hidden"], "hidden_act": mlp["activation"], "mlp_bias": mlp["bias"],
        "rms_norm_eps": eps,
        "tie_word_embeddings": tied(model), "use_cache": True,
        "num_attention_heads": attn["heads"], "num_key_value_heads": attn["kv_heads"], "head_dim": attn["head_dim"],
        "attention_bias": attn["bias"], "rope_parameters": {"rope_type": "default", "rope_theta": attn["rotary_base"]},
        **bamba_mamba2_config(mamba), "mamba_d_ssm": mamba["d_inner"], "projectors_bias": mamba["out_bias"],
        "mamba_rms_norm": mamba["rmsnorm"],
        "mamba_norm_before_gate": mamba["norm_before_gate"] if mamba["rmsnorm"] else True,
        "embedding_multiplier": model.embedding_multiplier, "lm_head_multiplier": model.lm_head_multiplier,
        "ssm_in_multiplier": multipliers["in"][0], "ssm_out_multiplier": multipliers["out"][0],
        "attention_in_multiplier": multipliers["in"][1], "attention_out_multiplier": multipliers["out"][1],
        "key_multiplier": scale * math.sqrt(attn["head_dim"]),
        "ssm_multipliers": list(mamba["multipliers"] or (1.0,) * 5), "mlp_multipliers": list(mlp["multipliers"]),
    }
    ours = model.state_dict()
    sd = put_ends(model, ours, "model.embed_tokens.weight", "model.final_layernorm.weight")
    for i, b in enumerate(blocks):
        prefix, theirs = f"layers.{i}.", f"model.layers.{i}."
        sd[theirs + "input_layernorm.weight"] = ours[prefix + "norm.weight"]
        sd[theirs + "pre_ff_layernorm.weight"] = ours[prefix + "norm2.weight"]
        mamba2_out(ours, prefix + "mixer.layers.0.", theirs + "mamba.", sd)
        attention_out(ours, prefix + "mixer.layers.1.attn.", b.mixer.layers[1].attn, theirs + "self_attn.", sd)
        gated_mlp_out(ours, prefix + "mlp.", theirs + "feed_forward.", sd)
    return saved(config, sd)


__all__ = ["falcon_h1_pattern", "from_hf_falcon_h1", "load_hf_falcon_h1", "to_hf_falcon_h1"]
