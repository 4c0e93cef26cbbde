"""Checkpoint formats of language models, each a :class:`Converter` in a registry keyed by format name, so
``LanguageModel.from_pretrained`` / ``save_pretrained`` (``pretrained.py``) dispatch on a folder's
``config.json`` and a new format is one ``register_converter`` call:

    format               config.json                        weights                    here
    "mamba"              Hugging Face, model_type "mamba"    model.safetensors          load and save
    "mamba_ssm.Mamba1"   mamba-ssm: d_model, n_layer, ssm_cfg pytorch_model.bin          load and save
    "ssmzoo"             model_type "ssmzoo": our arguments  model.safetensors          load and save (any layer)
    "mamba2"             Hugging Face Mamba2ForCausalLM      model.safetensors          load and save (convert_mamba2)
    "mamba_ssm.Mamba2"   mamba-ssm, ssm_cfg layer Mamba2     pytorch_model.bin          load and save (convert_mamba2)
    "bamba"              Hugging Face BambaForCausalLM       model.safetensors          load and save (convert_bamba)
    "nemotron_h"         Hugging Face NemotronHForCausalLM   model.safetensors          load and save (convert_nemotron_h)
    "falcon_h1"          Hugging Face FalconH1ForCausalLM    model.safetensors          load and save (convert_falcon_h1)
    "zamba2"             Hugging Face Zamba2ForCausalLM      model.safetensors          load and save (convert_zamba2)
    "qwen3_5_text"       Hugging Face Qwen3_5ForCausalLM     model.safetensors          load and save (convert_qwen3_5)
    "qwen3_5"            Qwen3_5ForConditionalGeneration     model.safetensors          load (its language model)

:func:`checkpoint_format` names a config's format: its ``model_type``, else ``mamba_ssm.<ssm_cfg layer>``.

Mamba-1 weights need only renaming, since our blocks use mamba-ssm's names inside (``mixer.in_proj``,
``mixer.conv1d``, ``mixer.x_proj``, ``mixer.dt_proj``, ``mixer.A_log``, ``mixer.D``, ``mixer.out_proj``, ``norm``):

    mamba-ssm (MambaLMHeadModel)        Hugging Face (MambaForCausalLM)     ssmzoo (LanguageModel)
    backbone.embedding.weight           backbone.embeddings.weight          embedding.weight
    backbone.layers.{i}.norm.weight     backbone.layers.{i}.norm.weight     layers.{i}.norm.weight
    backbone.layers.{i}.mixer.*         backbone.layers.{i}.mixer.*         layers.{i}.mixer.*
    backbone.layers.{i}.norm2.weight    -                                   layers.{i}.norm2.weight
    backbone.layers.{i}.mlp.fc1/fc2     -                                   layers.{i}.mlp.up/down
    backbone.norm_f.weight              backbone.norm_f.weight              norm_f.weight
    lm_head.weight                      lm_head.weight                      lm_head.weight

Neither library is imported here: pass a state dict (or a module) and its config object or dict.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .convert_bamba import load_hf_bamba, to_hf_bamba
from .convert_falcon_h1 import load_hf_falcon_h1, to_hf_falcon_h1
from ..version import __version__
from .checkpoint_checks import build_checked, require_keys
from .convert_mamba2 import load_hf_mamba2, load_mamba_ssm_mamba2, to_hf_mamba2, to_mamba_ssm_mamba2
from .convert_nemotron_h import load_hf_nemotron_h, to_hf_nemotron_h
from .convert_qwen3_5 import load_hf_qwen3_5, to_hf_qwen3_5
from .convert_zamba2 import load_hf_zamba2, to_hf_zamba2
from .hf_hybrid import has_qwen3_5_parts
from .lm import LanguageModel

# The formats, as messages name them
HF_MAMBA = 'a Hugging Face Mamba checkpoint (model_type "mamba")'
MAMBA_SSM = "a mamba-ssm MambaLMHeadModel checkpoint (Mamba1 layers)"
SSMZOO = 'an ssmzoo checkpoint (model_type "ssmzoo")'

# -- the registry ---------------------------------------------------------------------------------
Loader = Callable[[Mapping[str, Any], Mapping[str, Tensor]], LanguageModel]
# (config.json as a dict, state dict, weights file name), or None when the format cannot express the model
Saver = Callable[[LanguageModel], "tuple[dict[str, Any], dict[str, Tensor], str] | None"]


@dataclass(frozen=True)
class Converter:
    """A checkpoint format: ``load(config, state_dict)`` builds a LanguageModel; ``save(model)`` gives the
    format's (config, state dict, weights file name), or None if the model has no counterpart in it."""

    name: str
    load: Loader
    save: Saver | None = None


_CONVERTERS: dict[str, Converter] = {}


def register_converter(name: str, load: Loader, save: Saver | None = None) -> Converter:
    """Add a format (a ValueError if the name is taken). ``save_pretrained`` tries the formats that can save in
    registration order, ``"ssmzoo"`` last."""
    if name in _CONVERTERS:
        raise ValueError(f"checkpoint format {name!r} is already registered")
    _CONVERTERS[name] = Converter(name, load, save)
    return _CONVERTERS[name]


def converters() -> dict[str, Converter]:
    """The registered formats by name."""
    return dict(_CONVERTERS)


def get_converter(name: str) -> Converter:
    if name not in _CONVERTERS:
        raise ValueError(f"no converter for checkpoint format {name!r}; known formats: {', '.join(_CONVERTERS)}")
    return _CONVERTERS[name]


def checkpoint_format(config: Mapping[str, Any]) -> str:
    """The format of a ``config.json``: its ``model_type`` (Hugging Face, ssmzoo), else ``"mamba_ssm.<layer>"`` for
    mamba-ssm's (keys d_model, n_layer; the layer from ssm_cfg, default Mamba1)."""
    if "model_type" in config:
        return str(config["model_type"])
    if "d_model" in config and "n_layer" in config:
        return f"mamba_ssm.{(config.get('ssm_cfg') or {}).get('layer', 'Mamba1')}"
    if "ssm_cfg" in config or "d_model" in config or "n_layer" in config:  # a mamba-ssm config, incomplete
        require_keys("checkpoint_format", config, ("d_model", "n_layer"), "a mamba-ssm MambaLMHeadModel checkpoint")
    raise ValueError(f"config.json names no model_type and is not a mamba-ssm config (d_model, n_layer); keys: "
                     f"{', '.join(sorted(config))}")


# -- helpers --------------------------------------------------------------------------------------
_PREFIXES = {
    "mamba_ssm": (("backbone.embedding.", "embedding."), ("backbone.", ""), ("", "")),
    "hf": (("backbone.embeddings.", "embedding."), ("backbone.", ""), ("", "")),
}
_OUR_KEY = re.compile(r"^(embedding\.weight|norm_f\.weight|lm_head\.weight|layers\.\d+\.(norm|norm2|mixer|mlp)\..+)$")
_MLP = (("mlp.fc1.", "mlp.up."), ("mlp.fc2.", "mlp.down."))  # (mamba-ssm's, ours)


def _rename(state_dict: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for old, new in _PREFIXES[source]:
            if key.startswith(old):
                name = new + key[len(old) :]
                break
        for old, new in _MLP:
            name = name.replace(old, new)
        if not _OUR_KEY.match(name):
            raise ValueError(f"{source} checkpoint: unexpected key {key!r} (no counterpart in LanguageModel)")
        out[name] = value
    return out


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _embedding_rows(fn: str, state_dict: Mapping[str, Tensor], their_name: Callable[[str], str]) -> int:
    """The vocabulary (padded) the checkpoint's embedding holds; a ValueError naming the tensor if it has none."""
    embedding = state_dict.get("embedding.weight")
    if embedding is None or embedding.ndim != 2:
        got = "no such tensor" if embedding is None else f"shape {tuple(embedding.shape)}"
        raise ValueError(f"{fn}: the checkpoint's {their_name('embedding.weight')} (vocabulary, width) is missing "
                         f"({got})")
    return embedding.shape[0]


def _load(fn: str, what: str, kwargs: dict[str, Any], state_dict: dict[str, Tensor], tied: bool,
          config_keys: Mapping[str, str], their_name: Callable[[str], str]) -> LanguageModel:
    _embedding_rows(fn, state_dict, their_name)
    if tied or "lm_head.weight" not in state_dict:
        # A tied checkpoint may store the head or not; either way it is the embedding.
        state_dict["lm_head.weight"] = state_dict["embedding.weight"]
    return build_checked(fn, what, kwargs, state_dict, config_keys, their_name)


def _hf_name(key: str) -> str:
    """A LanguageModel tensor's name in a Hugging Face MambaForCausalLM / Mamba2ForCausalLM checkpoint."""
    return "backbone.embeddings.weight" if key == "embedding.weight" else key if key == "lm_head.weight" \
        else f"backbone.{key}"


def _mamba_ssm_name(key: str) -> str:
    """A LanguageModel tensor's name in a mamba-ssm MambaLMHeadModel checkpoint."""
    for theirs, ours in _MLP:
        key = key.replace(ours, theirs)
    return key if key == "lm_head.weight" else f"backbone.{key}"


def _state_dict(model_or_state_dict: nn.Module | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    if isinstance(model_or_state_dict, nn.Module):
        return model_or_state_dict.state_dict()
    if isinstance(model_or_state_dict, Mapping):
        return model_or_state_dict
    raise ValueError(f"expected an nn.Module or a state dict, got {type(model_or_state_dict).__name__}")


def _plain(model: LanguageModel) -> bool:
    """Whether the model has none of the stack's options the Mamba formats cannot say: multipliers of the
    embedding or the logits, shared blocks."""
    return model.embedding_multiplier == 1.0 and model.lm_head_multiplier == 1.0 and not len(model.shared_blocks)


def _weights_for_saving(model: LanguageModel, prefix: Callable[[str], str]) -> dict[str, Tensor]:
    """The model's tensors under the format's names; a tied head is left out (it is the embedding)."""
    tied = model.lm_head.weight is model.embedding.weight
    return {prefix(k): v.detach().contiguous() for k, v in model.state_dict().items()
            if not (tied and k == "lm_head.weight")}


# -- Hugging Face MambaForCausalLM ----------------------------------------------------------------
# LanguageModel's Mamba arguments with a MambaConfig counterpart (our name, theirs); others keep a model
# out of the Hugging Face format.
_HF_MAMBA_ARGS = (("d_state", "state_size"), ("d_conv", "conv_kernel"), ("expand", "expand"),
                  ("dt_rank", "time_step_rank"), ("conv_bias", "use_conv_bias"), ("bias", "use_bias"),
                  ("dt_min", "time_step_min"), ("dt_max", "time_step_max"), ("dt_init", "time_step_init_scheme"),
                  ("dt_scale", "time_step_scale"), ("dt_init_floor", "time_step_floor"))


def from_hf_mamba(model_or_state_dict: nn.Module | Mapping[str, Tensor], config: Any = None) -> LanguageModel:
    """A ``LanguageModel`` with the weights of a Hugging Face ``MambaForCausalLM``.

    config: its ``MambaConfig`` (or a dict with the same fields, as in config.json); taken from the model if
    omitted."""
    if config is None:
        config = getattr(model_or_state_dict, "config", None)
        if config is None:
            raise ValueError("from_hf_mamba: pass the MambaConfig when giving a bare state dict")
    fn = "from_hf_mamba"
    require_keys(fn, config, ("hidden_size", "num_hidden_layers"), HF_MAMBA)
    sd = _rename(_state_dict(model_or_state_dict), "hf")
    d_model, expand = _get(config, "hidden_size"), _get(config, "expand", 2)
    intermediate = _get(config, "intermediate_size", expand * d_model)
    if intermediate != expand * d_model:
        raise ValueError(f"from_hf_mamba: intermediate_size {intermediate} != expand * hidden_size ({expand} * {d_model})")
    if _get(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"from_hf_mamba: hidden_act {_get(config, 'hidden_act')!r}: the Mamba layer uses SiLU only")
    layer_args = {ours: _get(config, theirs) for ours, theirs in _HF_MAMBA_ARGS if _get(config, theirs) is not None}
    tied = bool(_get(config, "tie_word_embeddings", True))
    kwargs = dict(
        vocab_size=_embedding_rows(fn, sd, _hf_name),
        d_model=d_model,
        n_layers=_get(config, "num_hidden_layers"),
        layer="mamba",
        layer_args=layer_args,
        norm_eps=_get(config, "layer_norm_epsilon", 1e-5),
        tie_embeddings=tied,
    )
    keys = {"d_model": "hidden_size", "n_layers": "num_hidden_layers",
            **{f"layer_args.{ours}": theirs for ours, theirs in _HF_MAMBA_ARGS if ours in layer_args}}
    return _load(fn, HF_MAMBA, kwargs, sd, tied, keys, _hf_name)


def to_hf_mamba(model: LanguageModel) -> tuple[dict[str, Any], dict[str, Tensor], str] | None:
    """(config.json, state dict, "model.safetensors") of ``model`` as a Hugging Face ``MambaForCausalLM``, or None
    when it has no counterpart there (another layer, an MLP, a backend choice)."""
    if has_qwen3_5_parts(model):
        return None
    config = model.config
    if config["pattern"] is not None or not _plain(model):  # the format says n_layers x layer only
        return None
    layer_args = dict(config["layer_args"] or {})
    theirs = dict(_HF_MAMBA_ARGS)
    if config["layer"] != "mamba" or config["d_intermediate"] or set(layer_args) - set(theirs):
        return None
    mixer = model.layers[0].mixer
    ours = {"d_state": mixer.d_state, "d_conv": mixer.d_conv, "expand": mixer.expand, "dt_rank": mixer.dt_rank,
            "conv_bias": mixer.conv1d.bias is not None, "bias": mixer.in_proj.bias is not None}
    hf = {
        "architectures": ["MambaForCausalLM"], "model_type": "mamba",
        "vocab_size": model.embedding.num_embeddings, "hidden_size": model.d_model,
        "num_hidden_layers": model.n_layers, "layer_norm_epsilon": config["norm_eps"],
        "intermediate_size": mixer.d_inner, "hidden_act": "silu",
        "tie_word_embeddings": model.lm_head.weight is model.embedding.weight,
        # an init-time rescaling: the weights here are final (transformers would rescale them again on loading)
        "initializer_range": config["initializer_range"], "rescale_prenorm_residual": False,
        "residual_in_fp32": True, "use_cache": True,
    }
    hf.update({theirs[k]: v for k, v in ours.items()})
    hf.update({theirs[k]: v for k, v in layer_args.items() if k not in ours})
    return hf, _weights_for_saving(model, _hf_name), "model.safetensors"


# -- mamba-ssm MambaLMHeadModel -------------------------------------------------------------------
_SSM_CFG = ("d_state", "d_conv", "expand", "dt_rank", "conv_bias", "bias", "dt_min", "dt_max", "dt_init_floor",
            "dt_init", "dt_scale")


def from_mamba_ssm(model_or_state_dict: nn.Module | Mapping[str, Tensor], config: Any) -> LanguageModel:
    """A ``LanguageModel`` with the weights of a mamba-ssm ``MambaLMHeadModel`` (Mamba-1 blocks, with or without
    the gated MLP of ``d_intermediate``).

    config: its ``MambaConfig`` (d_model, n_layer, ssm_cfg, rms_norm, tie_embeddings, ...) or a dict
    of it (the checkpoint's config.json). The vocabulary size, padded by mamba-ssm, is read from
    the embedding."""
    fn = "from_mamba_ssm"
    require_keys(fn, config, ("d_model", "n_layer"), MAMBA_SSM)
    if not _get(config, "rms_norm", True):
        raise ValueError("from_mamba_ssm: only rms_norm=True checkpoints are supported (LanguageModel uses RMSNorm)")
    if _get(config, "attn_layer_idx", None):
        raise ValueError("from_mamba_ssm: checkpoints with attention layers (attn_layer_idx) are not supported")
    ssm_cfg = dict(_get(config, "ssm_cfg", None) or {})
    if ssm_cfg.pop("layer", "Mamba1") != "Mamba1":
        raise ValueError("from_mamba_ssm: only Mamba1 layers are supported (ssm_cfg['layer'])")
    unknown = [k for k in ssm_cfg if k not in _SSM_CFG]
    if unknown:
        raise ValueError(f"from_mamba_ssm: unsupported ssm_cfg entries {unknown}")
    sd = _rename(_state_dict(model_or_state_dict), "mamba_ssm")
    tied = bool(_get(config, "tie_embeddings", True))
    # mamba-ssm rounds the MLP's hidden width up to a multiple of 128: the checkpoint's own width counts
    d_intermediate = 0
    if _get(config, "d_intermediate", 0):
        down = sd.get("layers.0.mlp.down.weight")
        if down is None or down.ndim != 2:
            raise ValueError(f"{fn}: config.json has d_intermediate={_get(config, 'd_intermediate')!r} (an MLP in each "
                             f"block), but the checkpoint has no 2-d {_mamba_ssm_name('layers.0.mlp.down.weight')}")
        d_intermediate = down.shape[1]
    kwargs = dict(
        vocab_size=_embedding_rows(fn, sd, _mamba_ssm_name),
        d_model=_get(config, "d_model"),
        n_layers=_get(config, "n_layer"),
        layer="mamba",
        layer_args=ssm_cfg,
        d_intermediate=d_intermediate,
        norm_eps=1e-5,  # mamba-ssm's create_block default
        tie_embeddings=tied,
    )
    keys = {"d_model": "d_model", "n_layers": "n_layer", **{f"layer_args.{k}": f"ssm_cfg.{k}" for k in ssm_cfg}}
    return _load(fn, MAMBA_SSM, kwargs, sd, tied, keys, _mamba_ssm_name)


def to_mamba_ssm(model: LanguageModel) -> tuple[dict[str, Any], dict[str, Tensor], str] | None:
    """(config.json, state dict, "pytorch_model.bin") of ``model`` as a mamba-ssm ``MambaLMHeadModel``, or None."""
    if has_qwen3_5_parts(model):
        return None
    config = model.config
    if config["pattern"] is not None or not _plain(model):  # the format says n_layers x layer only
        return None
    if config["layer"] != "mamba" or set(config["layer_args"] or {}) - set(_SSM_CFG) or config["norm_eps"] != 1e-5 \
            or (config["d_intermediate"] and config["d_intermediate"] % 128):
        return None
    ssm = {
        "d_model": model.d_model, "d_intermediate": config["d_intermediate"], "n_layer": model.n_layers,
        "vocab_size": model.embedding.num_embeddings, "ssm_cfg": {"layer": "Mamba1", **config["layer_args"]},
        "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": 1, "tie_embeddings": model.lm_head.weight is model.embedding.weight,
    }

    return ssm, _weights_for_saving(model, _mamba_ssm_name), "pytorch_model.bin"


# -- ssmzoo's own ---------------------------------------------------------------------------------
def from_ssmzoo(config: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> LanguageModel:
    fn = "from_ssmzoo"
    required = [name for name, p in inspect.signature(LanguageModel.__init__).parameters.items()
                if name != "self" and p.default is inspect.Parameter.empty]
    require_keys(fn, config, required, SSMZOO)
    args = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "ssmzoo_version")}
    layer_args = args.get("layer_args") if isinstance(args.get("layer_args"), Mapping) else {}
    keys = {**{k: k for k in args if k != "layer_args"}, **{f"layer_args.{k}": f"layer_args.{k}" for k in layer_args}}
    return _load(fn, SSMZOO, args, dict(state_dict), bool(args.get("tie_embeddings", True)), keys, lambda k: k)


def to_ssmzoo(model: LanguageModel) -> tuple[dict[str, Any], dict[str, Tensor], str]:
    config = {"model_type": "ssmzoo", "architectures": ["LanguageModel"], "ssmzoo_version": __version__, **model.config}
    return config, _weights_for_saving(model, lambda k: k), "model.safetensors"


register_converter("mamba", lambda config, sd: from_hf_mamba(sd, config), to_hf_mamba)
register_converter("mamba_ssm.Mamba1", lambda config, sd: from_mamba_ssm(sd, config), to_mamba_ssm)
register_converter("mamba2", load_hf_mamba2, to_hf_mamba2)
register_converter("mamba_ssm.Mamba2", load_mamba_ssm_mamba2, to_mamba_ssm_mamba2)
register_converter("bamba", load_hf_bamba, to_hf_bamba)
register_converter("nemotron_h", load_hf_nemotron_h, to_hf_nemotron_h)
register_converter("falcon_h1", load_hf_falcon_h1, to_hf_falcon_h1)
register_converter("zamba2", load_hf_zamba2, to_hf_zamba2)
register_converter("qwen3_5_text", load_hf_qwen3_5, to_hf_qwen3_5)
register_converter("qwen3_5", load_hf_qwen3_5)  # the published multimodal folders: the language model is read
register_converter("ssmzoo", from_ssmzoo, to_ssmzoo)
