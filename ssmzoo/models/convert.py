"""Load Mamba language-model checkpoints from mamba-ssm and Hugging Face into ``LanguageModel``.

Both use our parameter names inside each block (``mixer.in_proj``, ``mixer.conv1d``, ``mixer.x_proj``,
``mixer.dt_proj``, ``mixer.A_log``, ``mixer.D``, ``mixer.out_proj``, ``norm``), so converting is
renaming the outer keys:

    mamba-ssm (MambaLMHeadModel)        Hugging Face (MambaForCausalLM)     ssmzoo (LanguageModel)
    backbone.embedding.weight           backbone.embeddings.weight          embedding.weight
    backbone.layers.{i}.norm.weight     backbone.layers.{i}.norm.weight     layers.{i}.norm.weight
    backbone.layers.{i}.mixer.*         backbone.layers.{i}.mixer.*         layers.{i}.mixer.*
    backbone.norm_f.weight              backbone.norm_f.weight              norm_f.weight
    lm_head.weight                      lm_head.weight                      lm_head.weight

Neither library is imported here: pass a state dict (or a module) and its config object or dict.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .lm import LanguageModel

_PREFIXES = {
    "mamba_ssm": (("backbone.embedding.", "embedding."), ("backbone.", ""), ("", "")),
    "hf": (("backbone.embeddings.", "embedding."), ("backbone.", ""), ("", "")),
}
_OUR_KEY = re.compile(r"^(embedding\.weight|norm_f\.weight|lm_head\.weight|layers\.\d+\.(norm|mixer)\..+)$")


def _rename(state_dict: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for old, new in _PREFIXES[source]:
            if key.startswith(old):
                name = new + key[len(old) :]
                break
        if not _OUR_KEY.match(name):
            raise ValueError(f"{source} checkpoint: unexpected key {key!r} (no counterpart in LanguageModel)")
        out[name] = value
    return out


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _load(model: LanguageModel, state_dict: dict[str, Tensor], tied: bool, source: str) -> LanguageModel:
    if tied or "lm_head.weight" not in state_dict:
        # A tied checkpoint may store the head or not; either way it is the embedding.
        state_dict["lm_head.weight"] = state_dict["embedding.weight"]
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source} checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
    return model


def _state_dict(model_or_state_dict: nn.Module | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    if isinstance(model_or_state_dict, nn.Module):
        return model_or_state_dict.state_dict()
    if isinstance(model_or_state_dict, Mapping):
        return model_or_state_dict
    raise ValueError(f"expected an nn.Module or a state dict, got {type(model_or_state_dict).__name__}")


def from_hf_mamba(model_or_state_dict: nn.Module | Mapping[str, Tensor], config: Any = None) -> LanguageModel:
    """A ``LanguageModel`` with the weights of a Hugging Face ``MambaForCausalLM``.

    config: its ``MambaConfig`` (or a dict with the same fields); taken from the model if omitted."""
    if config is None:
        config = getattr(model_or_state_dict, "config", None)
        if config is None:
            raise ValueError("from_hf_mamba: pass the MambaConfig when giving a bare state dict")
    sd = _rename(_state_dict(model_or_state_dict), "hf")
    d_model, expand = _get(config, "hidden_size"), _get(config, "expand")
    intermediate = _get(config, "intermediate_size", expand * d_model)
    if intermediate != expand * d_model:
        raise ValueError(f"from_hf_mamba: intermediate_size {intermediate} != expand * hidden_size ({expand} * {d_model})")
    model = LanguageModel(
        vocab_size=sd["embedding.weight"].shape[0],
        d_model=d_model,
        n_layers=_get(config, "num_hidden_layers"),
        layer="mamba",
        layer_args=dict(
            d_state=_get(config, "state_size"),
            d_conv=_get(config, "conv_kernel"),
            expand=expand,
            dt_rank=_get(config, "time_step_rank"),
            conv_bias=_get(config, "use_conv_bias", True),
            bias=_get(config, "use_bias", False),
        ),
        norm_eps=_get(config, "layer_norm_epsilon", 1e-5),
        tie_embeddings=_get(config, "tie_word_embeddings", True),
    )
    return _load(model, sd, _get(config, "tie_word_embeddings", True), "Hugging Face Mamba")


def from_mamba_ssm(model_or_state_dict: nn.Module | Mapping[str, Tensor], config: Any) -> LanguageModel:
    """A ``LanguageModel`` with the weights of a mamba-ssm ``MambaLMHeadModel`` (Mamba-1 blocks).

    config: its ``MambaConfig`` (d_model, n_layer, ssm_cfg, rms_norm, tie_embeddings, ...) or a dict
    of it (the checkpoint's config.json). The vocabulary size, padded by mamba-ssm, is read from
    the embedding."""
    if not _get(config, "rms_norm", True):
        raise ValueError("from_mamba_ssm: only rms_norm=True checkpoints are supported (LanguageModel uses RMSNorm)")
    if _get(config, "d_intermediate", 0):
        raise ValueError("from_mamba_ssm: checkpoints with MLP blocks (d_intermediate > 0) are not supported")
    if _get(config, "attn_layer_idx", None):
        raise ValueError("from_mamba_ssm: checkpoints with attention layers (attn_layer_idx) are not supported")
    ssm_cfg = dict(_get(config, "ssm_cfg", None) or {})
    if ssm_cfg.pop("layer", "Mamba1") != "Mamba1":
        raise ValueError("from_mamba_ssm: only Mamba1 layers are supported (ssm_cfg['layer'])")
    known = ("d_state", "d_conv", "expand", "dt_rank", "conv_bias", "bias", "dt_min", "dt_max", "dt_init_floor")
    unknown = [k for k in ssm_cfg if k not in known]
    if unknown:
        raise ValueError(f"from_mamba_ssm: unsupported ssm_cfg entries {unknown}")
    sd = _rename(_state_dict(model_or_state_dict), "mamba_ssm")
    tied = _get(config, "tie_embeddings", True)
    model = LanguageModel(
        vocab_size=sd["embedding.weight"].shape[0],
        d_model=_get(config, "d_model"),
        n_layers=_get(config, "n_layer"),
        layer="mamba",
        layer_args=ssm_cfg,
        norm_eps=1e-5,  # mamba-ssm's create_block default
        tie_embeddings=tied,
    )
    return _load(model, sd, tied, "mamba-ssm")
