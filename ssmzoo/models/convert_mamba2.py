"""Load Mamba-2 language-model checkpoints from Hugging Face (``Mamba2ForCausalLM``) and mamba-ssm
(``MambaLMHeadModel`` with ``ssm_cfg={"layer": "Mamba2", ...}``) into ``LanguageModel`` with ``mamba2`` layers,
and write a LanguageModel back in either format.

Our Mamba2 layer has mamba-ssm's parameter names (``mixer.in_proj``, ``mixer.conv1d``, ``mixer.dt_bias``,
``mixer.A_log``, ``mixer.D``, ``mixer.norm``, ``mixer.out_proj``), as Hugging Face's Mamba2Mixer does, so converting
is renaming the outer keys:

    mamba-ssm (MambaLMHeadModel)        Hugging Face (Mamba2ForCausalLM)    ssmzoo (LanguageModel)
    backbone.embedding.weight           backbone.embeddings.weight          embedding.weight
    backbone.layers.{i}.norm.weight     backbone.layers.{i}.norm.weight     layers.{i}.norm.weight
    backbone.layers.{i}.mixer.*         backbone.layers.{i}.mixer.*         layers.{i}.mixer.*
    backbone.norm_f.weight              backbone.norm_f.weight              norm_f.weight
    lm_head.weight                      lm_head.weight                      lm_head.weight

and translating the configuration (the tables ``HF_ARGS`` and ``MAMBA_SSM_ARGS`` below). What each format fixes:
- Hugging Face: the gate before the norm (its Mamba2Mixer has no norm_before_gate, whatever an old config says),
  one ``layer_norm_epsilon`` for the block norms, the final norm and the gated norm, D per head.
- mamba-ssm: eps 1e-5 for every norm (create_block's and RMSNormGated's defaults); ``ssm_cfg`` holds the
  Mamba2 constructor's arguments, kernel options (use_mem_eff_path) aside.
Neither library is imported here: pass a state dict (or a module) and its config object or dict. The
``load_*(config, state_dict)`` / ``to_*(model)`` pairs are registered in ``convert.py``'s checkpoint-format
registry as "mamba2" and "mamba_ssm.Mamba2", so ``LanguageModel.from_pretrained`` / ``save_pretrained`` read and
write both formats.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from ..layers.mamba2 import Mamba2
from .checkpoint_checks import build_checked, require_keys
from .hf_hybrid import has_qwen3_5_parts
from .lm import LanguageModel

# The formats, as messages name them
HF = 'a Hugging Face Mamba-2 checkpoint (model_type "mamba2")'
MAMBA_SSM = "a mamba-ssm MambaLMHeadModel checkpoint with Mamba2 layers"

# (our Mamba2 argument, Hugging Face Mamba2Config field)
HF_ARGS = (("d_state", "state_size"), ("d_conv", "conv_kernel"), ("expand", "expand"), ("headdim", "head_dim"),
           ("ngroups", "n_groups"), ("chunk_size", "chunk_size"), ("bias", "use_bias"),
           ("conv_bias", "use_conv_bias"), ("dt_min", "time_step_min"), ("dt_max", "time_step_max"),
           ("dt_init_floor", "time_step_floor"), ("dt_limit", "time_step_limit"))
# mamba-ssm's Mamba2 arguments we take from ssm_cfg under the same name (d_ssm: only the default, all channels)
MAMBA_SSM_ARGS = ("d_state", "d_conv", "conv_init", "expand", "headdim", "ngroups", "A_init_range", "D_has_hdim",
                  "rmsnorm", "norm_before_gate", "dt_min", "dt_max", "dt_init_floor", "dt_limit", "bias", "conv_bias",
                  "chunk_size")
MAMBA_SSM_EPS = 1e-5

_PREFIXES = {
    "mamba_ssm": (("backbone.embedding.", "embedding."), ("backbone.", ""), ("", "")),
    "hf": (("backbone.embeddings.", "embedding."), ("backbone.", ""), ("", "")),
}
_OUR_KEY = re.compile(r"^(embedding\.weight|norm_f\.weight|lm_head\.weight|layers\.\d+\.(norm|mixer)\..+)$")


def _get(config: Any, name: str, default: Any = None) -> Any:
    value = config.get(name, default) if isinstance(config, Mapping) else getattr(config, name, default)
    return _decode_floats(value)


def _decode_floats(value: Any) -> Any:
    """transformers >= 5 writes inf and nan in config.json as {"__float__": "Infinity"} (plain JSON has none)."""
    if isinstance(value, Mapping) and set(value) == {"__float__"}:
        return float(value["__float__"])
    if isinstance(value, (list, tuple)):
        return type(value)(_decode_floats(v) for v in value)
    return value


def _state_dict(model_or_state_dict: nn.Module | Mapping[str, Tensor], fn: str) -> Mapping[str, Tensor]:
    if isinstance(model_or_state_dict, nn.Module):
        return model_or_state_dict.state_dict()
    if isinstance(model_or_state_dict, Mapping):
        return model_or_state_dict
    raise ValueError(f"{fn}: expected an nn.Module or a state dict, got {type(model_or_state_dict).__name__}")


def _rename(state_dict: Mapping[str, Tensor], source: str, fn: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        name = next(new + key[len(old):] for old, new in _PREFIXES[source] if key.startswith(old))
        if not _OUR_KEY.match(name):
            raise ValueError(f"{fn}: unexpected key {key!r} (no counterpart in a LanguageModel of Mamba2 layers)")
        out[name] = value
    return out


def _build_and_load(fn: str, what: str, sd: dict[str, Tensor], d_model: int, n_layers: int,
                    layer_args: dict[str, Any], norm_eps: float, tied: bool, keys: Mapping[str, str],
                    their_name: Callable[[str], str]) -> LanguageModel:
    embedding = sd.get("embedding.weight")
    if embedding is None or embedding.ndim != 2:
        raise ValueError(f"{fn}: the checkpoint has no embedding weight ({their_name('embedding.weight')}, 2-d)")
    if tied or "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["embedding.weight"]  # a tied head is the embedding, stored or not
    kwargs = dict(vocab_size=embedding.shape[0], d_model=d_model, n_layers=n_layers, layer="mamba2",
                  layer_args=layer_args, norm_eps=norm_eps, tie_embeddings=tied)
    return build_checked(fn, what, kwargs, sd, keys, their_name)


def _name(embedding: str) -> Callable[[str], str]:
    """A LanguageModel tensor's name in a checkpoint whose embedding is called ``embedding``."""
    return lambda key: embedding if key == "embedding.weight" else key if key == "lm_head.weight" else f"backbone.{key}"


# -- Hugging Face Mamba2ForCausalLM ---------------------------------------------------------------------
def from_hf_mamba2(model_or_state_dict: nn.Module | Mapping[str, Tensor], config: Any = None) -> LanguageModel:
    """A ``LanguageModel`` (``mamba2`` layers) with the weights of a Hugging Face ``Mamba2ForCausalLM``.

    config: its ``Mamba2Config`` (or a dict of the same fields, as in config.json); taken from the model if
    omitted."""
    fn = "from_hf_mamba2"
    if config is None:
        config = getattr(model_or_state_dict, "config", None)
        if config is None:
            raise ValueError(f"{fn}: pass the Mamba2Config when giving a bare state dict")
    require_keys(fn, config, ("hidden_size", "num_hidden_layers"), HF)
    if _get(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"{fn}: hidden_act {_get(config, 'hidden_act')!r}: the Mamba2 layer uses SiLU only")
    d_model, expand = _get(config, "hidden_size"), _get(config, "expand", 2)
    num_heads, head_dim = _get(config, "num_heads"), _get(config, "head_dim")
    if num_heads is not None and head_dim is not None and num_heads * head_dim != expand * d_model:
        raise ValueError(f"{fn}: num_heads * head_dim ({num_heads} * {head_dim}) must equal expand * hidden_size "
                         f"({expand} * {d_model})")
    eps = _get(config, "layer_norm_epsilon", 1e-5)
    layer_args = {ours: _get(config, theirs) for ours, theirs in HF_ARGS if _get(config, theirs) is not None}
    if "dt_limit" in layer_args:
        layer_args["dt_limit"] = tuple(layer_args["dt_limit"])
    layer_args["norm_eps"] = eps
    sd = _rename(_state_dict(model_or_state_dict, fn), "hf", fn)
    keys = {"d_model": "hidden_size", "n_layers": "num_hidden_layers",
            **{f"layer_args.{ours}": theirs for ours, theirs in HF_ARGS if ours in layer_args}}
    return _build_and_load(fn, HF, sd, d_model, _get(config, "num_hidden_layers"), layer_args, eps,
                           bool(_get(config, "tie_word_embeddings", True)), keys, _name("backbone.embeddings.weight"))


def load_hf_mamba2(config: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> LanguageModel:
    """The registry's loader for format "mamba2" (config.json's model_type): config.json as a dict."""
    return from_hf_mamba2(state_dict, config)


def _mixers(model: LanguageModel) -> list[Mamba2] | None:
    """The blocks' Mamba2 mixers, or None when a block has another layer, more than norm + mixer, or options the
    formats cannot say."""
    if model.embedding_multiplier != 1.0 or model.lm_head_multiplier != 1.0 or len(model.shared_blocks):
        return None
    mixers = [getattr(block, "mixer", None) for block in model.layers]
    if not all(isinstance(m, Mamba2) for m in mixers) or any(getattr(b, "mlp", None) is not None for b in model.layers):
        return None
    # Options neither format has: D_inner apart from expand · d_model, in_proj multipliers, out_proj's own bias.
    if any(m.d_inner != m.expand * m.d_model or m.in_proj_multipliers is not None
           or (m.out_proj.bias is None) != (m.in_proj.bias is None) for m in mixers):
        return None
    return mixers


def _shared(mixers: list[Mamba2]) -> dict[str, Any] | None:
    """The format-relevant arguments of the mixers, or None if they differ between layers."""
    args = [dict(d_state=m.d_state, d_conv=m.d_conv, expand=m.expand, headdim=m.headdim, ngroups=m.ngroups,
                 chunk_size=m.chunk_size, bias=m.in_proj.bias is not None, conv_bias=m.conv1d.bias is not None,
                 dt_limit=tuple(m.dt_limit), D_has_hdim=m.D_has_hdim, rmsnorm=m.rmsnorm,
                 norm_before_gate=m.norm is not None and m.norm.norm_before_gate,
                 norm_eps=m.norm.eps if m.norm is not None else None) for m in mixers]
    return args[0] if all(a == args[0] for a in args) else None


def _weights(model: LanguageModel, prefix_embedding: str) -> dict[str, Tensor]:
    """Our tensors under a format's names (a tied head left out: it is the embedding)."""
    tied = model.lm_head.weight is model.embedding.weight
    out = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            if tied:
                continue
            name = key
        elif key == "embedding.weight":
            name = prefix_embedding
        else:
            name = f"backbone.{key}"
        out[name] = value.detach().contiguous()
    return out


def to_hf_mamba2(model: LanguageModel) -> tuple[dict[str, Any], dict[str, Tensor], str] | None:
    """(config.json, state dict, "model.safetensors") of ``model`` as a Hugging Face ``Mamba2ForCausalLM``, or
    None when it has no counterpart there (other layers, an MLP, D per channel, no norm or the norm before the
    gate, a gated-norm eps unlike the block norms')."""
    if has_qwen3_5_parts(model):
        return None
    mixers = _mixers(model)
    args = _shared(mixers) if mixers else None
    eps = model.norm_f.eps
    if (args is None or args["D_has_hdim"] or not args["rmsnorm"] or args["norm_before_gate"]
            or args["norm_eps"] != eps or any(b.norm.eps != eps for b in model.layers)):
        return None
    theirs = dict(HF_ARGS)
    config = {
        "architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2",
        "vocab_size": model.embedding.num_embeddings, "hidden_size": model.d_model,
        "num_hidden_layers": model.n_layers, "num_heads": mixers[0].nheads, "layer_norm_epsilon": eps,
        "hidden_act": "silu", "tie_word_embeddings": model.lm_head.weight is model.embedding.weight,
        # the weights are final: an init-time rescaling would be applied again by transformers
        "rescale_prenorm_residual": False, "residual_in_fp32": True, "use_cache": True,
    }
    config.update({theirs[k]: (list(v) if k == "dt_limit" else v) for k, v in args.items() if k in theirs})
    return config, _weights(model, "backbone.embeddings.weight"), "model.safetensors"


# -- mamba-ssm MambaLMHeadModel with Mamba2 layers ------------------------------------------------------------
def from_mamba_ssm_mamba2(model_or_state_dict: nn.Module | Mapping[str, Tensor], config: Any) -> LanguageModel:
    """A ``LanguageModel`` (``mamba2`` layers) with the weights of a mamba-ssm ``MambaLMHeadModel`` whose
    ``ssm_cfg`` has ``layer="Mamba2"``.

    config: its ``MambaConfig`` (d_model, n_layer, ssm_cfg, rms_norm, tie_embeddings, ...) or a dict of it (the
    checkpoint's config.json). The vocabulary size, padded by mamba-ssm, is read from the embedding."""
    fn = "from_mamba_ssm_mamba2"
    require_keys(fn, config, ("d_model", "n_layer"), MAMBA_SSM)
    if not _get(config, "rms_norm", True):
        raise ValueError(f"{fn}: only rms_norm=True checkpoints are supported (LanguageModel uses RMSNorm)")
    if _get(config, "d_intermediate", 0):
        raise ValueError(f"{fn}: checkpoints with MLP blocks (d_intermediate > 0) are not supported")
    if _get(config, "attn_layer_idx", None):
        raise ValueError(f"{fn}: checkpoints with attention layers (attn_layer_idx) are not supported")
    ssm_cfg = dict(_get(config, "ssm_cfg", None) or {})
    if ssm_cfg.pop("layer", "Mamba1") != "Mamba2":
        raise ValueError(f"{fn}: ssm_cfg['layer'] must be 'Mamba2' (Mamba1 checkpoints: convert.from_mamba_ssm)")
    ssm_cfg.pop("use_mem_eff_path", None)  # a kernel choice, not the model
    d_model = _get(config, "d_model")
    d_ssm = ssm_cfg.pop("d_ssm", None)
    if d_ssm is not None and d_ssm != ssm_cfg.get("expand", 2) * d_model:
        raise ValueError(f"{fn}: ssm_cfg d_ssm={d_ssm} (an SSM on part of the channels, the rest a gated MLP) is "
                         "not supported")
    unknown = [k for k in ssm_cfg if k not in MAMBA_SSM_ARGS]
    if unknown:
        raise ValueError(f"{fn}: unsupported ssm_cfg entries {unknown}")
    for pair in ("A_init_range", "dt_limit"):
        if pair in ssm_cfg:
            ssm_cfg[pair] = tuple(ssm_cfg[pair])
    ssm_cfg["norm_eps"] = MAMBA_SSM_EPS
    sd = _rename(_state_dict(model_or_state_dict, fn), "mamba_ssm", fn)
    keys = {"d_model": "d_model", "n_layers": "n_layer", **{f"layer_args.{k}": f"ssm_cfg.{k}" for k in ssm_cfg
                                                                if k != "norm_eps"}}
    return _build_and_load(fn, MAMBA_SSM, sd, d_model, _get(config, "n_layer"), ssm_cfg, MAMBA_SSM_EPS,
                           bool(_get(config, "tie_embeddings", True)), keys, _name("backbone.embedding.weight"))


def load_mamba_ssm_mamba2(config: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> LanguageModel:
    """The registry's loader for format "mamba_ssm.Mamba2": config.json as a dict."""
    return from_mamba_ssm_mamba2(state_dict, config)


def to_mamba_ssm_mamba2(model: LanguageModel) -> tuple[dict[str, Any], dict[str, Tensor], str] | None:
    """(config.json, state dict, "pytorch_model.bin") of ``model`` as a mamba-ssm ``MambaLMHeadModel`` with Mamba2
    layers, or None when it has no counterpart there (other layers, an MLP, a norm eps other than 1e-5)."""
    if has_qwen3_5_parts(model):
        return None
    mixers = _mixers(model)
    args = _shared(mixers) if mixers else None
    if (args is None or args["norm_eps"] not in (None, MAMBA_SSM_EPS) or model.norm_f.eps != MAMBA_SSM_EPS
            or any(b.norm.eps != MAMBA_SSM_EPS for b in model.layers)):
        return None
    ssm_cfg = {"layer": "Mamba2", **{k: v for k, v in args.items() if k != "norm_eps"}}
    ssm_cfg["dt_limit"] = list(ssm_cfg["dt_limit"])
    config = {
        "d_model": model.d_model, "d_intermediate": 0, "n_layer": model.n_layers,
        "vocab_size": model.embedding.num_embeddings, "ssm_cfg": ssm_cfg, "attn_layer_idx": [], "attn_cfg": {},
        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 1,
        "tie_embeddings": model.lm_head.weight is model.embedding.weight,
    }
    return config, _weights(model, "backbone.embedding.weight"), "pytorch_model.bin"


__all__ = ["HF_ARGS", "MAMBA_SSM_ARGS", "from_hf_mamba2", "from_mamba_ssm_mamba2", "load_hf_mamba2",
           "load_mamba_ssm_mamba2", "to_hf_mamba2", "to_mamba_ssm_mamba2"]
