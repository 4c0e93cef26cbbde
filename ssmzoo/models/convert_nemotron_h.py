"""NVIDIA's Nemotron-H (transformers' ``NemotronHForCausalLM``, model_type "nemotron_h") as a ``LanguageModel``, and
back.

Each layer is one pre-norm residual block of one kind (``layers_block_type``, or the older
``hybrid_override_pattern`` string, M / * / -): a Mamba-2 mixer, grouped-query attention without any position
embedding, or an MLP alone (squared ReLU, not gated) — in our pattern a block of ``mamba2``, of ``attention``
with ``rotary=False``, or an ``mlp`` entry:

    transformers (saved names)                      ssmzoo (LanguageModel)
    backbone.embeddings.weight                      embedding.weight
    backbone.layers.{i}.norm.weight                 layers.{i}.norm.weight
    backbone.layers.{i}.mixer.* (Mamba-2)           layers.{i}.mixer.*
    backbone.layers.{i}.mixer.{q,k,v,o}_proj        layers.{i}.mixer.attn.qkv / out
    backbone.layers.{i}.mixer.up_proj / down_proj   layers.{i}.mlp.up / down
    backbone.norm_f.weight                          norm_f.weight
    lm_head.weight                                  lm_head.weight

(A model's own state dict says ``model.`` where the saved file says ``backbone.``; both load.) The mixture-of-experts
blocks ("moe", Nemotron-3 Nano) and multi-token-prediction layers are not supported: such a checkpoint gives a
ValueError. One ``layer_norm_epsilon`` for every norm. transformers' Nemotron-H never ties its head to the
embedding (whatever ``tie_word_embeddings`` says), so neither do we.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..layers.attention import FullAttention
from ..layers.mamba2 import Mamba2
from .hf_hybrid import (Tensors, activation, attention_in, attention_layout, attention_out, build_loaded,
                        config_head, config_of, dt_limit_json, get, has_qwen3_5_parts, is_mamba_ssm_mixer,
                        mamba2_args, mamba2_in, mamba2_layout, mamba2_out, mlp_layout, one, put_ends, saved,
                        state_dict_of, take_ends)
from .lm import Block, LanguageModel, MLPBlock

PREFIXES = ("backbone.", "model.")
_LEGACY = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe",
           "mamba": "linear_attention", "attention": "full_attention"}


def block_types(config: Any, fn: str) -> list[str]:
    types = get(config, "layers_block_type") or get(config, "layer_types")
    if types is None and get(config, "hybrid_override_pattern") is not None:
        types = list(get(config, "hybrid_override_pattern"))
    if not types:
        raise ValueError(f"{fn}: the config names no layers (layers_block_type or hybrid_override_pattern)")
    types = [_LEGACY.get(t, t) for t in types]
    if "moe" in types:
        raise ValueError(f"{fn}: mixture-of-experts blocks ('moe', Nemotron-3 Nano) are not supported")
    unknown = sorted(set(types) - {"linear_attention", "full_attention", "mlp"})
    if unknown:
        raise ValueError(f"{fn}: unknown block types {unknown}")
    return types


def nemotron_h_pattern(config: Any, fn: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(our pattern, the other LanguageModel arguments) of a NemotronHConfig."""
    if get(config, "num_nextn_predict_layers", 0):
        raise ValueError(f"{fn}: multi-token prediction layers (num_nextn_predict_layers) are not supported")
    if get(config, "sliding_window") is not None:
        raise ValueError(f"{fn}: sliding_window={get(config, 'sliding_window')} is not supported")
    if get(config, "mamba_hidden_act", "silu") != "silu":
        raise ValueError(f"{fn}: mamba_hidden_act {get(config, 'mamba_hidden_act')!r}: the Mamba2 layer uses SiLU")
    d = get(config, "hidden_size")
    eps = get(config, "layer_norm_epsilon", 1e-5)
    heads = get(config, "num_attention_heads")
    nheads, headdim = get(config, "mamba_num_heads", 128), get(config, "mamba_head_dim", 64)
    mamba = mamba2_args(d, nheads * headdim, nheads, headdim, get(config, "n_groups", 8),
                        get(config, "ssm_state_size", 128), get(config, "conv_kernel", 4),
                        bool(get(config, "use_conv_bias", True)), bool(get(config, "use_bias", False)),
                        get(config, "chunk_size", 128), get(config, "time_step_limit"), eps, fn)
    # transformers' NemotronHAttention: no position embedding and no biases, whatever attention_bias says
    attention = dict(heads=heads, kv_heads=get(config, "num_key_value_heads", heads),
                     head_dim=get(config, "head_dim", d // heads), rotary=False, bias=False)
    mlp = {"mlp": get(config, "intermediate_size"), "mlp_gated": False, "mlp_bias": bool(get(config, "mlp_bias", False)),
           "mlp_activation": activation(get(config, "mlp_hidden_act", "relu2"), fn, "mlp_hidden_act")}
    pattern = []
    for kind in block_types(config, fn):
        if kind == "linear_attention":
            pattern.append({"layer": "mamba2", "args": mamba, "mlp": 0})
        elif kind == "full_attention":
            pattern.append({"layer": "attention", "args": attention, "mlp": 0})
        else:
            pattern.append(dict(mlp))
    # transformers' NemotronHForCausalLM ties no weights, whatever tie_word_embeddings says: its head is its own
    return pattern, dict(d_model=d, norm_eps=eps, tie_embeddings=False)


def from_hf_nemotron_h(model_or_state_dict: nn.Module | Mapping[str, Tensor], config: Any = None) -> LanguageModel:
    """A ``LanguageModel`` with the weights of transformers' ``NemotronHForCausalLM``; config: its ``NemotronHConfig``
    (or config.json's dict), taken from the model if omitted."""
    fn = "from_hf_nemotron_h"
    config = config_of(model_or_state_dict, config, fn, "NemotronHConfig")
    pattern, args = nemotron_h_pattern(config, fn)
    t = Tensors(state_dict_of(model_or_state_dict, fn), fn, PREFIXES)
    sd = take_ends(t, "embeddings.weight", "norm_f.weight", head_required=True)
    for i, entry in enumerate(pattern):
        theirs, ours = f"layers.{i}.", f"layers.{i}."
        sd[ours + "norm.weight"] = t.take(theirs + "norm.weight")
        if entry.get("layer") == "attention":
            attention_in(t, theirs + "mixer.", ours + "mixer.attn.", sd)
        elif entry.get("layer") == "mamba2":
            mamba2_in(t, theirs + "mixer.", ours + "mixer.", sd)
        else:
            for name in ("up_proj", "down_proj"):
                for kind in ("weight", "bias"):
                    value = t.take(f"{theirs}mixer.{name}.{kind}") if kind == "weight" else \
                        t.take_optional(f"{theirs}mixer.{name}.{kind}")
                    if value is not None:
                        sd[f"{ours}mlp.{name.removesuffix('_proj')}.{kind}"] = value
    return build_loaded(fn, t, sd, pattern, args)


def load_hf_nemotron_h(config: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> LanguageModel:
    """The registry's loader for format "nemotron_h": config.json as a dict."""
    return from_hf_nemotron_h(state_dict, config)


_HF_ACT = {"relu2": "relu2", "silu": "silu", "gelu": "gelu", "relu": "relu", "sigmoid": "sigmoid"}


def to_hf_nemotron_h(model: LanguageModel) -> tuple[dict[str, Any], dict[str, Tensor], str] | None:
    """(config.json, state dict, "model.safetensors") of ``model`` as transformers' ``NemotronHForCausalLM``, or None
    when it has no counterpart there."""
    if has_qwen3_5_parts(model):
        return None
    if model.embedding_multiplier != 1.0 or model.lm_head_multiplier != 1.0 or len(model.shared_blocks):
        return None
    eps = model.norm_f.eps
    types, mambas, attns, mlps = [], [], [], []
    for b in model.layers:
        if isinstance(b, MLPBlock):
            types.append("mlp")
            mlps.append(b.mlp)
        elif isinstance(b, Block) and b.mlp is None and b.norm is not None and b.shared_block is None \
                and isinstance(b.mixer, (Mamba2, FullAttention)):
            types.append("linear_attention" if isinstance(b.mixer, Mamba2) else "full_attention")
            (mambas if isinstance(b.mixer, Mamba2) else attns).append(b.mixer)
        else:
            return None
        if b.norm.eps != eps:
            return None
    mamba, attn = one([mamba2_layout(m) for m in mambas]), one([attention_layout(a) for a in attns])
    mlp = one([mlp_layout(m) for m in mlps])
    if mambas and (mamba is None or not is_mamba_ssm_mixer(mamba, eps)):
        return None
    if attns and (attn is None or attn["rotary"] or attn["scale"] is not None or attn["bias"] or attn["out_bias"]):
        return None  # transformers' Nemotron-H attention has neither position embedding nor biases
    if mlps and (mlp is None or mlp["gated"] or mlp["multipliers"] != (1.0, 1.0)):
        return None
    config: dict[str, Any] = {
        **config_head(model, "NemotronHForCausalLM", "nemotron_h"), "layers_block_type": types,
        "layer_norm_epsilon": eps, "tie_word_embeddings": False, "use_cache": True,
        "residual_in_fp32": False, "rescale_prenorm_residual": False,
    }
    if mamba is not None:
        config.update(mamba_num_heads=mamba["nheads"], mamba_head_dim=mamba["headdim"], n_groups=mamba["ngroups"],
                      ssm_state_size=mamba["d_state"], conv_kernel=mamba["d_conv"], use_conv_bias=mamba["conv_bias"],
                      use_bias=mamba["bias"], mamba_proj_bias=mamba["bias"], chunk_size=mamba["chunk_size"],
                      time_step_limit=dt_limit_json(mamba["dt_limit"]), mamba_hidden_act="silu")
    if attn is not None:
        config.update(num_attention_heads=attn["heads"], num_key_value_heads=attn["kv_heads"],
                      head_dim=attn["head_dim"], attention_bias=False)
    if mlp is not None:
        config.update(intermediate_size=mlp["hidden"], mlp_hidden_act=_HF_ACT[mlp["activation"]], mlp_bias=mlp["bias"])
    ours = model.state_dict()
    # the head always written: transformers' Nemotron-H never ties it to the embedding
    sd = put_ends(model, ours, "backbone.embeddings.weight", "backbone.norm_f.weight", head_always=True)
    for i, (kind, b) in enumerate(zip(types, model.layers)):
        prefix, theirs = f"layers.{i}.", f"backbone.layers.{i}."
        sd[theirs + "norm.weight"] = ours[prefix + "norm.weight"]
        if kind == "full_attention":
            attention_out(ours, prefix + "mixer.attn.", b.mixer.attn, theirs + "mixer.", sd)
        elif kind == "linear_attention":
            mamba2_out(ours, prefix + "mixer.", theirs + "mixer.", sd)
        else:
            for name in ("up", "down"):
                for part in ("weight", "bias"):
                    if f"{prefix}mlp.{name}.{part}" in ours:
                        sd[f"{theirs}mixer.{name}_proj.{part}"] = ours[f"{prefix}mlp.{name}.{part}"]
    return saved(config, sd)


__all__ = ["from_hf_nemotron_h", "load_hf_nemotron_h", "nemotron_h_pattern", "to_hf_nemotron_h"]
