"""Qwen3.5's dense text model (transformers' ``Qwen3_5ForCausalLM``, model_type "qwen3_5_text"; also the language
model inside ``Qwen3_5ForConditionalGeneration`` folders, model_type "qwen3_5", the form Qwen publishes) as a
``LanguageModel``, and back.

Every layer is a pre-norm block of a Gated DeltaNet (``layer_types`` "linear_attention") or gated full attention
("full_attention"), then a SwiGLU MLP block. Qwen3.5's RMSNorms scale by (1 + weight) (``norm_unit_offset``; the
Gated DeltaNet's own gated norm by weight); its attention projects q_proj to [q ‖ gate] per head, RMSNorms each
query and key head ((1 + weight) too) before a rotary embedding on the first ``partial_rotary_factor`` of each head
(by halves), and multiplies the heads' output by sigmoid(gate) before o_proj. Its rotary is multimodal (mrope):
for text the three position streams are the same, so it is the plain rotary at the token's position.

    transformers (Qwen3_5ForCausalLM)                   ssmzoo (LanguageModel)
    model.embed_tokens.weight                           embedding.weight
    model.layers.{i}.input_layernorm.weight             layers.{i}.norm.weight
    model.layers.{i}.linear_attn.in_proj_qkv / _z       layers.{i}.mixer.in_proj_qkvz    (GatedDeltaNet: rows regrouped
    model.layers.{i}.linear_attn.in_proj_b / _a         layers.{i}.mixer.in_proj_ba       per key head, Qwen3-Next's)
    model.layers.{i}.linear_attn.{conv1d, dt_bias, A_log, norm, out_proj}   layers.{i}.mixer.* (same names)
    model.layers.{i}.self_attn.q_proj ([q ‖ gate] per head), k_proj, v_proj   layers.{i}.mixer.attn.qkv = [q ‖ k ‖ v ‖ gate]
    model.layers.{i}.self_attn.{q_norm, k_norm}         layers.{i}.mixer.attn.{q_norm, k_norm}
    model.layers.{i}.self_attn.o_proj                   layers.{i}.mixer.attn.out
    model.layers.{i}.post_attention_layernorm.weight    layers.{i}.norm2.weight
    model.layers.{i}.mlp.{gate,up}_proj / down_proj     layers.{i}.mlp.up = [up ‖ gate] / down
    model.norm.weight                                   norm_f.weight
    lm_head.weight                                      lm_head.weight

Regrouping moves rows, so loading and saving are exact. A "qwen3_5" folder's language model sits under
``model.language_model.``; its vision tower (``model.visual.``) and multi-token-prediction head (``mtp.``) have no
counterpart in a language model and are left out, as transformers' ``Qwen3_5ForCausalLM`` leaves them. One
``rms_norm_eps`` for every norm. Pass a state dict (or a module) and its config object or config.json's dict;
transformers is not imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from ..layers.attention import FullAttention
from ..layers.gated_deltanet import GatedDeltaNet
from .hf_hybrid import (Tensors, activation, attention_layout, build_loaded, config_head, config_of, gated_mlp_in,
                        gated_mlp_out, get, mlp_layout, one, put_ends, rope, saved, state_dict_of, take_ends, tied)
from .lm import Block, LanguageModel

# The language model's prefix in a Qwen3_5ForConditionalGeneration folder, then in a Qwen3_5ForCausalLM one.
PREFIXES = ("model.language_model.", "model.")
# What a language model leaves out of a Qwen3.5 folder: the vision tower and the multi-token-prediction head.
LEFT_OUT = ("model.visual.", "mtp.")
GDN_TENSORS = ("conv1d.weight", "dt_bias", "A_log", "norm.weight", "out_proj.weight")


def text_config(config: Any) -> Any:
    """The text model's config: a "qwen3_5" (multimodal) config's ``text_config``, else the config itself."""
    inner = get(config, "text_config")
    return inner if inner is not None and get(config, "model_type") == "qwen3_5" else config


def layer_types(config: Any, fn: str) -> list[str]:
    n_layers = get(config, "num_hidden_layers", 32)
    types = get(config, "layer_types")
    if types is None:  # transformers' rule: full attention every full_attention_interval-th layer
        interval = get(config, "full_attention_interval", 4)
        types = ["linear_attention" if (i + 1) % interval else "full_attention" for i in range(n_layers)]
    types = list(types)
    if len(types) != n_layers or set(types) - {"linear_attention", "full_attention"}:
        raise ValueError(f"{fn}: layer_types must give 'linear_attention' or 'full_attention' for each of the "
                         f"{n_layers} layers, got {types!r}")
    return types


def qwen3_5_pattern(config: Any, fn: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(our pattern, the other LanguageModel arguments) of a Qwen3_5TextConfig; absent fields take its defaults."""
    d = get(config, "hidden_size", 4096)
    eps = get(config, "rms_norm_eps", 1e-6)
    heads = get(config, "num_attention_heads", 16)
    head_dim = get(config, "head_dim", 256)
    act = activation(get(config, "hidden_act", "silu"), fn, "hidden_act")
    types = layer_types(config, fn)
    if act != "silu" and "linear_attention" in types:
        raise ValueError(f"{fn}: hidden_act={get(config, 'hidden_act')!r}: the Gated DeltaNet layer's convolution "
                         "is followed by SiLU only")
    theta, partial = rope(config, fn, default_partial=0.25)
    rotary_dim = int(head_dim * partial)
    if rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(f"{fn}: the rotary embedding covers {rotary_dim} channels of each head (head_dim "
                         f"{head_dim} x partial_rotary_factor {partial}); it must be a positive even number")
    gdn = dict(num_k_heads=get(config, "linear_num_key_heads", 16), num_v_heads=get(config, "linear_num_value_heads", 32),
               head_k_dim=get(config, "linear_key_head_dim", 128), head_v_dim=get(config, "linear_value_head_dim", 128),
               conv_kernel_size=get(config, "linear_conv_kernel_dim", 4), norm_eps=eps)
    attention = dict(heads=heads, kv_heads=get(config, "num_key_value_heads", 4), head_dim=head_dim, rotary=True,
                     rotary_base=theta, rotary_dim=rotary_dim, rotary_interleaved=False,
                     bias=bool(get(config, "attention_bias", False)), output_gate=True, qk_norm=True, qk_norm_eps=eps,
                     qk_norm_unit_offset=True)
    mlp = dict(mlp=get(config, "intermediate_size", 12288), mlp_gated=True, mlp_activation=act)
    pattern = [dict({"layer": "attention", "args": attention} if t == "full_attention"
                    else {"layer": "gated_deltanet", "args": gdn}, **mlp) for t in types]
    return pattern, dict(d_model=d, norm_eps=eps, norm_unit_offset=True)


def _tied(config: Any) -> bool:
    """tie_word_embeddings: a "qwen3_5" config says it at the top (its text_config may repeat it)."""
    value = get(config, "tie_word_embeddings")
    if value is None and get(config, "model_type") == "qwen3_5":
        value = get(get(config, "text_config") or {}, "tie_word_embeddings")
    return bool(value)


def _gdn_in(t: Tensors, theirs: str, ours: str, gdn: dict[str, Any], out: dict[str, Tensor]) -> None:
    """in_proj_qkv, in_proj_z, in_proj_b, in_proj_a -> in_proj_qkvz, in_proj_ba grouped per key head (rows moved)."""
    nk, dk = gdn["num_k_heads"], gdn["head_k_dim"]
    r, dv = gdn["num_v_heads"] // nk, gdn["head_v_dim"]
    qkv, z = t.take(theirs + "in_proj_qkv.weight"), t.take(theirs + "in_proj_z.weight")
    b, a = t.take(theirs + "in_proj_b.weight"), t.take(theirs + "in_proj_a.weight")
    if qkv.ndim != 2 or qkv.shape[0] != nk * (2 * dk + r * dv) or z.shape[0] != nk * r * dv \
            or b.shape[0] != nk * r or a.shape[0] != nk * r:
        raise ValueError(f"{t.fn}: {theirs}in_proj_* have shapes {tuple(qkv.shape)}, {tuple(z.shape)}, "
                         f"{tuple(b.shape)}, {tuple(a.shape)}; the config's heads ({nk} key heads of {dk}, "
                         f"{nk * r} value heads of {dv}) ask for {nk * (2 * dk + r * dv)}, {nk * r * dv}, {nk * r}, "
                         f"{nk * r} rows")
    q, k, v = qkv.split([nk * dk, nk * dk, nk * r * dv])
    per_head = [rearrange(w, "(h c) d -> h c d", h=nk) for w in (q, k, v, z)]
    out[ours + "in_proj_qkvz.weight"] = rearrange(torch.cat(per_head, 1), "h c d -> (h c) d")
    out[ours + "in_proj_ba.weight"] = rearrange(torch.cat([rearrange(w, "(h c) d -> h c d", h=nk) for w in (b, a)], 1),
                                                "h c d -> (h c) d")
    for name in GDN_TENSORS:
        out[ours + name] = t.take(theirs + name)


def _gdn_out(ours: Mapping[str, Tensor], prefix: str, m: GatedDeltaNet, theirs: str, out: dict[str, Tensor]) -> None:
    nk, dk, dv = m.num_k_heads, m.head_k_dim, m.head_v_dim
    r = m.num_v_heads // nk
    qkvz = rearrange(ours[prefix + "in_proj_qkvz.weight"], "(h c) d -> h c d", h=nk)
    q, k, v, z = (rearrange(w, "h c d -> (h c) d") for w in qkvz.split([dk, dk, r * dv, r * dv], 1))
    b, a = (rearrange(w, "h c d -> (h c) d")
            for w in rearrange(ours[prefix + "in_proj_ba.weight"], "(h c) d -> h c d", h=nk).split([r, r], 1))
    out[theirs + "in_proj_qkv.weight"] = torch.cat([q, k, v])
    out[theirs + "in_proj_z.weight"], out[theirs + "in_proj_b.weight"], out[theirs + "in_proj_a.weight"] = z, b, a
    for name in GDN_TENSORS:
        out[theirs + name] = ours[prefix + name]


def _attention_in(t: Tensors, theirs: str, ours: str, heads: int, head_dim: int, out: dict[str, Tensor]) -> None:
    """q_proj ([q ‖ gate] per head), k_proj, v_proj, o_proj, q_norm, k_norm -> qkv = [q ‖ k ‖ v ‖ gate], out,
    q_norm, k_norm."""
    for kind in ("weight", "bias"):
        q_proj = t.take(f"{theirs}q_proj.{kind}") if kind == "weight" else t.take_optional(f"{theirs}q_proj.{kind}")
        if q_proj is None:
            continue
        if q_proj.shape[0] != heads * 2 * head_dim:
            raise ValueError(f"{t.fn}: {theirs}q_proj.{kind} has {q_proj.shape[0]} rows; {heads} heads of "
                             f"[q ‖ gate] x {head_dim} ask for {heads * 2 * head_dim}")
        q, gate = rearrange(q_proj, "(h two c) ... -> two (h c) ...", two=2, c=head_dim)
        out[f"{ours}qkv.{kind}"] = torch.cat([q, t.take(f"{theirs}k_proj.{kind}"), t.take(f"{theirs}v_proj.{kind}"),
                                              gate])
    out[ours + "out.weight"] = t.take(theirs + "o_proj.weight")
    bias = t.take_optional(theirs + "o_proj.bias")
    if bias is not None:
        out[ours + "out.bias"] = bias
    for name in ("q_norm.weight", "k_norm.weight"):
        out[ours + name] = t.take(theirs + name)


def _attention_out(ours: Mapping[str, Tensor], prefix: str, a: Any, theirs: str, out: dict[str, Tensor]) -> None:
    width, kv = a.heads * a.head_dim, a.kv_heads * a.head_dim
    for kind in ("weight", "bias"):
        if f"{prefix}qkv.{kind}" in ours:
            q, k, v, gate = ours[f"{prefix}qkv.{kind}"].split([width, kv, kv, width])
            out[f"{theirs}q_proj.{kind}"] = rearrange(torch.stack([q, gate]), "two (h c) ... -> (h two c) ...",
                                                      c=a.head_dim)
            out[f"{theirs}k_proj.{kind}"], out[f"{theirs}v_proj.{kind}"] = k, v
        if f"{prefix}out.{kind}" in ours:
            out[f"{theirs}o_proj.{kind}"] = ours[f"{prefix}out.{kind}"]
    for name in ("q_norm.weight", "k_norm.weight"):
        out[theirs + name] = ours[prefix + name]


def from_hf_qwen3_5(model_or_state_dict: nn.Module | Mapping[str, Tensor], config: Any = None) -> LanguageModel:
    """A ``LanguageModel`` with the weights of transformers' ``Qwen3_5ForCausalLM`` (or the language model of a
    ``Qwen3_5ForConditionalGeneration``); config: its config object (or config.json's dict), taken from the model if
    omitted."""
    fn = "from_hf_qwen3_5"
    config = config_of(model_or_state_dict, config, fn, "Qwen3_5TextConfig")
    text = text_config(config)
    pattern, args = qwen3_5_pattern(text, fn)
    sd_in = {k: v for k, v in state_dict_of(model_or_state_dict, fn).items() if not k.startswith(LEFT_OUT)}
    t = Tensors(sd_in, fn, PREFIXES)
    sd = take_ends(t, "embed_tokens.weight", "norm.weight")
    for i, entry in enumerate(pattern):
        theirs = ours = f"layers.{i}."
        sd[ours + "norm.weight"] = t.take(theirs + "input_layernorm.weight")
        sd[ours + "norm2.weight"] = t.take(theirs + "post_attention_layernorm.weight")
        if entry["layer"] == "attention":
            _attention_in(t, theirs + "self_attn.", ours + "mixer.attn.", entry["args"]["heads"],
                          entry["args"]["head_dim"], sd)
        else:
            _gdn_in(t, theirs + "linear_attn.", ours + "mixer.", entry["args"], sd)
        gated_mlp_in(t, theirs + "mlp.", ours + "mlp.", sd)
    return build_loaded(fn, t, sd, pattern, dict(args, tie_embeddings=_tied(config)))


def load_hf_qwen3_5(config: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> LanguageModel:
    """The registry's loader for formats "qwen3_5_text" and "qwen3_5" (config.json's model_type)."""
    return from_hf_qwen3_5(state_dict, config)


def _gdn_layout(m: GatedDeltaNet) -> dict[str, Any]:
    return dict(num_k_heads=m.num_k_heads, num_v_heads=m.num_v_heads, head_k_dim=m.head_k_dim,
                head_v_dim=m.head_v_dim, conv_kernel_size=m.conv_kernel_size, eps=m.norm.eps,
                conv_bias=m.conv1d.bias is not None)


def to_hf_qwen3_5(model: LanguageModel) -> tuple[dict[str, Any], dict[str, Tensor], str] | None:
    """(config.json, state dict, "model.safetensors") of ``model`` as transformers' ``Qwen3_5ForCausalLM``, or None
    when it has no counterpart there."""
    blocks = list(model.layers)
    if (model.embedding_multiplier != 1.0 or model.lm_head_multiplier != 1.0 or len(model.shared_blocks)
            or not model.norm_f.unit_offset
            or not all(isinstance(b, Block) and b.shared_block is None and b.norm is not None and b.mlp is not None
                       and b.norm.unit_offset and b.norm2.unit_offset for b in blocks)):
        return None
    eps = model.norm_f.eps
    mixers = [b.mixer for b in blocks]
    gdns = [m for m in mixers if isinstance(m, GatedDeltaNet)]
    attns = [m for m in mixers if isinstance(m, FullAttention)]
    gdn, attn = one([_gdn_layout(m) for m in gdns]), one([attention_layout(a) for a in attns])
    mlp = one([mlp_layout(b.mlp) for b in blocks])
    if (len(gdns) + len(attns) != len(blocks) or mlp is None or (gdns and gdn is None) or (attns and attn is None)
            or not mlp["gated"] or mlp["bias"] or mlp["multipliers"] != (1.0, 1.0)
            or any(b.norm.eps != eps or b.norm2.eps != eps or b.norm.group_size != b.norm.dim for b in blocks)):
        return None
    if gdn is not None and (gdn["eps"] != eps or gdn["conv_bias"] or mlp["activation"] != "silu"):
        return None
    if attn is not None:
        a = attns[0].attn
        if (not attn["rotary"] or attn["interleaved"] or attn["scale"] is not None or attn["bias"] != attn["out_bias"]
                or not a.output_gate or a.q_norm is None or not a.q_norm.unit_offset or a.q_norm.eps != eps
                or any(x.attn.persistent is not None or x.attn.d_output != x.attn.d_model for x in attns)):
            return None
        partial = attn["rotary_dim"] / attn["head_dim"]
        if int(attn["head_dim"] * partial) != attn["rotary_dim"]:
            return None
    config: dict[str, Any] = {
        **config_head(model, "Qwen3_5ForCausalLM", "qwen3_5_text"), "num_hidden_layers": len(blocks),
        "intermediate_size": mlp["hidden"], "hidden_act": mlp["activation"], "rms_norm_eps": eps,
        "tie_word_embeddings": tied(model), "use_cache": True,
        "layer_types": ["full_attention" if isinstance(m, FullAttention) else "linear_attention" for m in mixers],
    }
    if gdn is not None:
        config.update(linear_num_key_heads=gdn["num_k_heads"], linear_num_value_heads=gdn["num_v_heads"],
                      linear_key_head_dim=gdn["head_k_dim"], linear_value_head_dim=gdn["head_v_dim"],
                      linear_conv_kernel_dim=gdn["conv_kernel_size"])
    if attn is not None:
        config.update(num_attention_heads=attn["heads"], num_key_value_heads=attn["kv_heads"],
                      head_dim=attn["head_dim"], attention_bias=attn["bias"],
                      rope_parameters={"rope_type": "default", "rope_theta": attn["rotary_base"],
                                       "partial_rotary_factor": partial})
    ours = model.state_dict()
    sd = put_ends(model, ours, "model.embed_tokens.weight", "model.norm.weight")
    for i, m in enumerate(mixers):
        prefix, theirs = f"layers.{i}.", f"model.layers.{i}."
        sd[theirs + "input_layernorm.weight"] = ours[prefix + "norm.weight"]
        sd[theirs + "post_attention_layernorm.weight"] = ours[prefix + "norm2.weight"]
        if isinstance(m, FullAttention):
            _attention_out(ours, prefix + "mixer.attn.", m.attn, theirs + "self_attn.", sd)
        else:
            _gdn_out(ours, prefix + "mixer.", m, theirs + "linear_attn.", sd)
        gated_mlp_out(ours, prefix + "mlp.", theirs + "mlp.", sd)
    return saved(config, sd)


__all__ = ["from_hf_qwen3_5", "load_hf_qwen3_5", "qwen3_5_pattern", "to_hf_qwen3_5"]
