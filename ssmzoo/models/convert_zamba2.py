"""Zyphra's Zamba2 (transformers' ``Zamba2ForCausalLM``, model_type "zamba2") as a ``LanguageModel``, and back.

Every layer is a pre-norm Mamba-2 block; at each "hybrid" layer (``layers_block_type``) it first runs one of
``num_mem_blocks`` shared transformer blocks (uses cycle through them) on [x ‖ the token embedding], whose output,
through the layer's own linear map, is added to the Mamba-2 block's input: our ``shared_blocks`` and the
pattern key ``shared_block`` (``shared_block.py``). A shared block's per-use adapters (the MLP's always,
q/k/v's with ``use_shared_attention_adapter``) are the using block's.

    transformers (Zamba2ForCausalLM)                                    ssmzoo (LanguageModel)
    model.embed_tokens.weight                                           embedding.weight
    model.layers.{i}.input_layernorm / mamba.*   (Mamba-2 layer)        layers.{i}.norm / mixer.*
    model.layers.{i}.mamba_decoder.input_layernorm / mamba.*  (hybrid)  layers.{i}.norm / mixer.*
    model.layers.{i}.linear.weight                                      layers.{i}.shared_use.proj.weight
    model.layers.{f}.shared_transformer.input_layernorm                 shared_blocks.{b}.norm
        .self_attn.{q,k,v}_proj / o_proj                                shared_blocks.{b}.attn.qkv / out
        .pre_ff_layernorm                                               shared_blocks.{b}.norm2
        .feed_forward.gate_up_proj / down_proj                          shared_blocks.{b}.mlp.up (halves swapped) / down
        .self_attn.linear_{q,k,v}_adapter_list.{j}.{0,1}                layers.{i}.shared_use.{q,k,v}_adapter.down / up
        .feed_forward.gate_up_proj_adapter_list.{j}.{0,1}               layers.{i}.shared_use.mlp_adapter.down / up
    model.final_layernorm.weight                                        norm_f.weight

where i is the j-th hybrid layer, b = j mod num_mem_blocks, and f the first hybrid layer of block b (transformers
ties the other uses' shared_transformer to it and saves it once; a state dict holding every copy loads too, if
the copies agree). transformers ties those uses only when it ties the head (``tie_word_embeddings``): an
untied Zamba2 gives every hybrid layer its own block, and so do we. Zamba2's fixed choices: the gated norm's eps 1e-5, convolution bias, Δ ≥ time_step_min
(``dt_limit``), attention without biases, head_dim = 2 · hidden / heads, softmax scale 1/sqrt(head_dim / 2).

transformers' cached decoding leaves out the Δ ≥ time_step_min clamp that its forward applies (its one-token
update takes no limit); ours clamps in both, as mamba-ssm does, so the two can differ once softplus(Δ) falls
below time_step_min.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..layers.mamba2 import Mamba2
from .hf_hybrid import (Tensors, activation, attention_out, build_loaded, config_head, config_of, get,
                        has_qwen3_5_parts, is_mamba_ssm_mixer, mamba2_args, mamba2_in, mamba2_layout, mamba2_out, one,
                        put_ends, rope, saved, state_dict_of, take_ends, tied)
from .lm import Block, LanguageModel

PREFIXES = ("model.",)
_SHARED = "shared_transformer."
_UNUSED_ADAPTER = re.compile(r"layers\.\d+\.shared_transformer\..*adapter_list\.\d+\.[01]\.weight$")


def _hybrid_layers(config: Any, fn: str) -> list[bool]:
    types = get(config, "layers_block_type") or get(config, "layer_types")
    if types is None:
        raise ValueError(f"{fn}: the config names no layers_block_type")
    types = ["hybrid" if t == "hybrid" else "mamba" if t in ("mamba", "linear_attention") else t for t in types]
    unknown = sorted(set(types) - {"hybrid", "mamba"})
    if unknown:
        raise ValueError(f"{fn}: unknown layer types {unknown}")
    return [t == "hybrid" for t in types]


def zamba2_pattern(config: Any, fn: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(our pattern, the other LanguageModel arguments, shared_blocks included) of a Zamba2Config."""
    d = get(config, "hidden_size")
    eps = get(config, "rms_norm_eps", 1e-5)
    hybrid = _hybrid_layers(config, fn)
    expand, nheads = get(config, "mamba_expand", 2), get(config, "n_mamba_heads", 8)
    bias = bool(get(config, "add_bias_linear", False))
    mamba = mamba2_args(d, int(expand * d), nheads, None, get(config, "mamba_ngroups", 1),
                        get(config, "mamba_d_state", 64), get(config, "mamba_d_conv", 4), True, bias,
                        get(config, "chunk_size", 256), (get(config, "time_step_min", 0.001), math.inf), 1e-5, fn)
    heads = get(config, "num_attention_heads")
    head_dim = 2 * d // heads
    theta, partial = rope(config, fn)
    if partial != 1.0:
        raise ValueError(f"{fn}: transformers' Zamba2 rotates whole heads; partial_rotary_factor={partial}")
    rank = get(config, "adapter_rank", 128)
    shared = dict(heads=heads, kv_heads=get(config, "num_key_value_heads", heads), head_dim=head_dim,
                  rotary=bool(get(config, "use_mem_rope", False)), rotary_base=theta,
                  rotary_interleaved=False, scale=(head_dim / 2) ** -0.5,
                  attention_bias=False, mlp=get(config, "intermediate_size", 4 * d), mlp_gated=True,
                  mlp_activation=activation(get(config, "hidden_act", "gelu"), fn, "hidden_act"), mlp_bias=bias,
                  embedding_input=True, adapter_rank=rank,
                  attention_adapters=bool(get(config, "use_shared_attention_adapter", False)))
    tie = bool(get(config, "tie_word_embeddings", True))
    # transformers ties the uses of a shared block only when it ties the head (its tying is one switch): untied,
    # every hybrid layer has a block of its own
    n_blocks = get(config, "num_mem_blocks", 1) if tie else len(hybrid)
    pattern, uses = [], 0
    for is_hybrid in hybrid:
        entry: dict[str, Any] = {"layer": "mamba2", "args": mamba, "mlp": 0}
        if is_hybrid:
            entry["shared_block"] = uses % n_blocks
            uses += 1
        pattern.append(entry)
    n_blocks = min(n_blocks, uses)  # a block no layer uses has no weights
    return pattern, dict(d_model=d, norm_eps=eps, tie_embeddings=tie,
                         shared_blocks=[dict(shared) for _ in range(n_blocks)] or None)


def _take_shared(t: Tensors, uses: list[int], name: str, fn: str) -> Tensor:
    """A shared block's tensor: under the first use's layer, where transformers saves it once; any copy under the
    other uses' layers (a model's own state dict holds them all) must equal it."""
    first = t.take(f"layers.{uses[0]}.{_SHARED}{name}")
    for layer in uses[1:]:
        copy = t.take_optional(f"layers.{layer}.{_SHARED}{name}")
        if copy is not None and not torch.equal(copy, first):
            raise ValueError(f"{fn}: layers.{layer}.{_SHARED}{name} differs from layers.{uses[0]}'s: the shared "
                             "block's uses are not tied")
    return first


def from_hf_zamba2(model_or_state_dict: nn.Module | Mapping[str, Tensor], config: Any = None) -> LanguageModel:
    """A ``LanguageModel`` with the weights of transformers' ``Zamba2ForCausalLM``; config: its ``Zamba2Config`` (or
    config.json's dict), taken from the model if omitted."""
    fn = "from_hf_zamba2"
    config = config_of(model_or_state_dict, config, fn, "Zamba2Config")
    pattern, args = zamba2_pattern(config, fn)
    t = Tensors(state_dict_of(model_or_state_dict, fn), fn, PREFIXES)
    sd = take_ends(t, "embed_tokens.weight", "final_layernorm.weight")
    hybrid = [i for i, e in enumerate(pattern) if "shared_block" in e]
    block_uses: dict[int, list[int]] = {}
    for i in hybrid:
        block_uses.setdefault(pattern[i]["shared_block"], []).append(i)
    for b, uses in block_uses.items():
        ours = f"shared_blocks.{b}."
        sd[ours + "norm.weight"] = _take_shared(t, uses, "input_layernorm.weight", fn)
        sd[ours + "attn.qkv.weight"] = torch.cat([_take_shared(t, uses, f"self_attn.{p}_proj.weight", fn)
                                                  for p in "qkv"])
        sd[ours + "attn.out.weight"] = _take_shared(t, uses, "self_attn.o_proj.weight", fn)
        sd[ours + "norm2.weight"] = _take_shared(t, uses, "pre_ff_layernorm.weight", fn)
        for kind in ("weight", "bias"):
            name = f"feed_forward.gate_up_proj.{kind}"
            if kind == "weight" or t.has(f"layers.{uses[0]}.{_SHARED}{name}"):
                gate, up = _take_shared(t, uses, name, fn).chunk(2)  # act(first) · second: ours a · act(g)
                sd[ours + f"mlp.up.{kind}"] = torch.cat([up, gate])
            name = f"feed_forward.down_proj.{kind}"
            if kind == "weight" or t.has(f"layers.{uses[0]}.{_SHARED}{name}"):
                sd[ours + f"mlp.down.{kind}"] = _take_shared(t, uses, name, fn)
    for j, i in enumerate(hybrid):  # the j-th use's adapters, stored with its block's first use
        first = block_uses[pattern[i]["shared_block"]]
        ours = f"layers.{i}.shared_use."
        sd[ours + "proj.weight"] = t.take(f"layers.{i}.linear.weight")
        adapters = [("feed_forward.gate_up_proj_adapter_list", "mlp_adapter")]
        if args["shared_blocks"][0]["attention_adapters"]:
            adapters += [(f"self_attn.linear_{p}_adapter_list", f"{p}_adapter") for p in "qkv"]
        for theirs, mine in adapters:
            down = _take_shared(t, first, f"{theirs}.{j}.0.weight", fn)
            up = _take_shared(t, first, f"{theirs}.{j}.1.weight", fn)
            if mine == "mlp_adapter":
                gate, value = up.chunk(2)
                up = torch.cat([value, gate])
            sd[ours + f"{mine}.down.weight"], sd[ours + f"{mine}.up.weight"] = down, up
    for i, entry in enumerate(pattern):
        theirs = f"layers.{i}.mamba_decoder." if "shared_block" in entry else f"layers.{i}."
        sd[f"layers.{i}.norm.weight"] = t.take(theirs + "input_layernorm.weight")
        mamba2_in(t, theirs + "mamba.", f"layers.{i}.mixer.", sd)
    for key in [k for k in t.left if _UNUSED_ADAPTER.match(k)]:  # an untied copy's slots for other uses: never read
        t.take(key)
    return build_loaded(fn, t, sd, pattern, args)


def load_hf_zamba2(config: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> LanguageModel:
    """The registry's loader for format "zamba2": config.json as a dict."""
    return from_hf_zamba2(state_dict, config)


def to_hf_zamba2(model: LanguageModel) -> tuple[dict[str, Any], dict[str, Tensor], str] | None:
    """(config.json, state dict, "model.safetensors") of ``model`` as transformers' ``Zamba2ForCausalLM``, or None
    when it has no counterpart there."""
    if has_qwen3_5_parts(model):
        return None
    blocks = list(model.layers)
    if (model.embedding_multiplier != 1.0 or model.lm_head_multiplier != 1.0 or not len(model.shared_blocks)
            or not all(isinstance(b, Block) and b.mlp is None and b.norm is not None and isinstance(b.mixer, Mamba2)
                       for b in blocks)):
        return None
    eps, d = model.norm_f.eps, model.d_model
    mamba = one([mamba2_layout(b.mixer) for b in blocks])
    shared = list(model.shared_blocks)
    index = {id(s): k for k, s in enumerate(shared)}
    uses = [index[id(b.shared_block)] for b in blocks if b.shared_block is not None]
    n_blocks = len(shared)
    s0 = shared[0]
    a = s0.attn
    layout = one([(s.attn.heads, s.attn.kv_heads, s.attn.head_dim, s.attn.rotary, s.attn.rotary_base,
                   s.attn.rotary_dim, s.attn.rotary_interleaved, s.attn.scale, s.attn.qkv.bias is None,
                   s.attn.out.bias is None, s.mlp.hidden, s.mlp.gated, s.mlp.activation, s.mlp.up.bias is not None,
                   s.mlp.gate_multiplier, s.mlp.output_multiplier, s.embedding_input, s.adapter_rank,
                   s.attention_adapters, s.norm.eps, s.norm2.eps) for s in shared])
    if (mamba is None or layout is None or uses != [j % n_blocks for j in range(len(uses))]
            or any(b.norm.eps != eps for b in blocks)):
        return None
    if (mamba["d_inner"] % d or not is_mamba_ssm_mixer(mamba, 1e-5) or not mamba["conv_bias"]
            or not math.isinf(mamba["dt_limit"][1])):
        return None
    if (a.head_dim != 2 * d // a.heads or a.heads * a.head_dim != 2 * d or a.scale != (a.head_dim / 2) ** -0.5
            or a.qkv.bias is not None or a.out.bias is not None or (a.rotary and (a.rotary_interleaved
                                                                                   or a.rotary_dim != a.head_dim))
            or not s0.mlp.gated or s0.mlp.gate_multiplier != 1.0 or s0.mlp.output_multiplier != 1.0
            or not s0.embedding_input or not s0.adapter_rank or s0.norm.eps != eps or s0.norm2.eps != eps
            or (s0.mlp.up.bias is not None) != mamba["bias"]):
        return None
    types = ["hybrid" if b.shared_block is not None else "mamba" for b in blocks]
    config: dict[str, Any] = {
        **config_head(model, "Zamba2ForCausalLM", "zamba2"), "num_hidden_layers": len(blocks),
        "layers_block_type": types, "rms_norm_eps": eps, "tie_word_embeddings": tied(model), "use_cache": True,
        "mamba_d_state": mamba["d_state"], "mamba_d_conv": mamba["d_conv"], "mamba_expand": mamba["d_inner"] // d,
        "mamba_ngroups": mamba["ngroups"], "n_mamba_heads": mamba["nheads"], "chunk_size": mamba["chunk_size"],
        "time_step_min": mamba["dt_limit"][0], "add_bias_linear": mamba["bias"], "use_conv_bias": True,
        "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads, "intermediate_size": s0.mlp.hidden,
        "hidden_act": s0.mlp.activation, "num_mem_blocks": n_blocks, "adapter_rank": s0.adapter_rank,
        "use_shared_attention_adapter": s0.attention_adapters, "use_mem_rope": a.rotary,
        "rope_parameters": {"rope_type": "default", "rope_theta": a.rotary_base},
    }
    ours = model.state_dict()
    sd = put_ends(model, ours, "model.embed_tokens.weight", "model.final_layernorm.weight")
    hybrid = [i for i, b in enumerate(blocks) if b.shared_block is not None]
    first = {}
    for i in hybrid:
        first.setdefault(index[id(blocks[i].shared_block)], i)
    for k, i in first.items():
        theirs, mine = f"model.layers.{i}.{_SHARED}", f"shared_blocks.{k}."
        sd[theirs + "input_layernorm.weight"] = ours[mine + "norm.weight"]
        attention_out(ours, mine + "attn.", shared[k].attn, theirs + "self_attn.", sd)
        sd[theirs + "pre_ff_layernorm.weight"] = ours[mine + "norm2.weight"]
        for kind in ("weight", "bias"):
            if f"{mine}mlp.up.{kind}" in ours:
                up, gate = ours[f"{mine}mlp.up.{kind}"].chunk(2)
                sd[f"{theirs}feed_forward.gate_up_proj.{kind}"] = torch.cat([gate, up])
            if f"{mine}mlp.down.{kind}" in ours:
                sd[f"{theirs}feed_forward.down_proj.{kind}"] = ours[f"{mine}mlp.down.{kind}"]
    for j, i in enumerate(hybrid):
        owner = f"model.layers.{first[index[id(blocks[i].shared_block)]]}.{_SHARED}"
        mine = f"layers.{i}.shared_use."
        sd[f"model.layers.{i}.linear.weight"] = ours[mine + "proj.weight"]
        adapters = [("feed_forward.gate_up_proj_adapter_list", "mlp_adapter")]
        if s0.attention_adapters:
            adapters += [(f"self_attn.linear_{p}_adapter_list", f"{p}_adapter") for p in "qkv"]
        for theirs, name in adapters:
            up = ours[f"{mine}{name}.up.weight"]
            if name == "mlp_adapter":
                value, gate = up.chunk(2)
                up = torch.cat([gate, value])
            sd[f"{owner}{theirs}.{j}.0.weight"] = ours[f"{mine}{name}.down.weight"]
            sd[f"{owner}{theirs}.{j}.1.weight"] = up
    for i, b in enumerate(blocks):
        theirs = f"model.layers.{i}.mamba_decoder." if b.shared_block is not None else f"model.layers.{i}."
        sd[theirs + "input_layernorm.weight"] = ours[f"layers.{i}.norm.weight"]
        mamba2_out(ours, f"layers.{i}.mixer.", theirs + "mamba.", sd)
    return saved(config, sd)


__all__ = ["from_hf_zamba2", "load_hf_zamba2", "to_hf_zamba2", "zamba2_pattern"]
