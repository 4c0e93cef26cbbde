"""What the converters of transformers' hybrid language models share (``convert_bamba.py``,
``convert_nemotron_h.py``, ``convert_falcon_h1.py``, ``convert_zamba2.py``, ``convert_qwen3_5.py``): reading a config (an object or
config.json's dict), their rotary settings, and moving attention, MLP and Mamba-2 tensors between their names
and ours.

Their Mamba-2 mixers use mamba-ssm's names (``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``, ``norm``,
``out_proj``), as our ``Mamba2`` does, so those tensors keep their names. Their attention has ``q_proj``,
``k_proj``, ``v_proj``, ``o_proj``; ours one ``qkv`` = [q ‖ k ‖ v] and ``out``. Their gated MLPs hold ``gate_proj``
and ``up_proj`` (act(gate) · up); ours one ``up`` = [up ‖ gate] (a · act(g)).

transformers is not imported here: the converters read state dicts and configs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..layers.attention import FullAttention
from ..layers.mamba2 import Mamba2
from ..modules.attention import Attention
from ..modules.rmsnorm import RMSNorm
from .lm import LanguageModel

# transformers' activation names (ACT2FN) that our MLP computes the same way
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "relu": "relu", "relu2": "relu2", "sigmoid": "sigmoid"}
MAMBA2_TENSORS = ("in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D",
                  "norm.weight", "out_proj.weight", "out_proj.bias")


def decode_floats(value: Any) -> Any:
    """transformers >= 5 writes inf and nan in config.json as {"__float__": "Infinity"} (plain JSON has none)."""
    if isinstance(value, Mapping) and set(value) == {"__float__"}:
        return float(value["__float__"])
    if isinstance(value, (list, tuple)):
        return type(value)(decode_floats(v) for v in value)
    return value


def get(config: Any, name: str, default: Any = None) -> Any:
    """A config field, from a config object or config.json's dict; ``default`` where absent or None."""
    value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
    return default if value is None else decode_floats(value)


def state_dict_of(model_or_state_dict: nn.Module | Mapping[str, Tensor], fn: str) -> dict[str, Tensor]:
    if isinstance(model_or_state_dict, nn.Module):
        return dict(model_or_state_dict.state_dict())
    if isinstance(model_or_state_dict, Mapping):
        return dict(model_or_state_dict)
    raise ValueError(f"{fn}: expected an nn.Module or a state dict, got {type(model_or_state_dict).__name__}")


def config_of(model_or_state_dict: Any, config: Any, fn: str, kind: str) -> Any:
    if config is None:
        config = getattr(model_or_state_dict, "config", None)
        if config is None:
            raise ValueError(f"{fn}: pass the {kind} when giving a bare state dict")
    return config


def rope(config: Any, fn: str, default_partial: float = 1.0) -> tuple[float, float]:
    """(θ, partial rotary factor) of a config: ``rope_parameters`` (transformers >= 5) or the older ``rope_theta``
    and ``rope_scaling``; only the plain ("default") rotary is supported."""
    params = get(config, "rope_parameters") or {}
    if not isinstance(params, Mapping):
        params = dict(params)
    kind = params.get("rope_type", params.get("type", "default"))
    scaling = get(config, "rope_scaling")
    if kind != "default" or (scaling and (scaling.get("rope_type", scaling.get("type")) or "default") != "default"):
        raise ValueError(f"{fn}: rotary scaling {kind if kind != 'default' else scaling!r} is not supported (only "
                         "the plain rotary embedding)")
    theta = params.get("rope_theta", get(config, "rope_theta", 10000.0))
    partial = params.get("partial_rotary_factor", get(config, "partial_rotary_factor", default_partial))
    return float(theta), float(partial)


def activation(name: str, fn: str, arg: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"{fn}: {arg}={name!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class Tensors:
    """A checkpoint's tensors, taken by name: what is left at the end has no counterpart (an error)."""

    def __init__(self, state_dict: dict[str, Tensor], fn: str, prefixes: tuple[str, ...] = ()) -> None:
        self.fn = fn
        self.left = {}
        for key, value in state_dict.items():  # the model's prefix ("model.", "backbone.") dropped once
            name = next((key[len(p):] for p in prefixes if key.startswith(p)), key)
            self.left[name] = value

    def take(self, name: str) -> Tensor:
        if name not in self.left:
            raise ValueError(f"{self.fn}: the checkpoint has no tensor {name!r} (the config asks for it)")
        return self.left.pop(name)

    def take_optional(self, name: str) -> Tensor | None:
        return self.left.pop(name, None)

    def has(self, name: str) -> bool:
        return name in self.left

    def check_all_taken(self) -> None:
        if self.left:
            raise ValueError(f"{self.fn}: the checkpoint has tensors with no counterpart in the model its config "
                             f"describes: {sorted(self.left)[:10]}{' ...' if len(self.left) > 10 else ''}")


def mamba2_in(t: Tensors, theirs: str, ours: str, out: dict[str, Tensor]) -> None:
    """A Mamba-2 mixer's tensors (same names on both sides); biases and the gated norm's weight where present."""
    for name in MAMBA2_TENSORS:
        value = t.take_optional(theirs + name) if name.endswith(".bias") or name.startswith("norm.") else \
            t.take(theirs + name)
        if value is not None:
            out[ours + name] = value


def mamba2_out(ours: Mapping[str, Tensor], prefix: str, theirs: str, out: dict[str, Tensor]) -> None:
    for name in MAMBA2_TENSORS:
        if prefix + name in ours:
            out[theirs + name] = ours[prefix + name]


def attention_in(t: Tensors, theirs: str, ours: str, out: dict[str, Tensor]) -> None:
    """q_proj, k_proj, v_proj, o_proj (weights, biases if any) -> qkv, out."""
    out[ours + "qkv.weight"] = torch.cat([t.take(f"{theirs}{p}_proj.weight") for p in "qkv"])
    if t.has(theirs + "q_proj.bias"):
        out[ours + "qkv.bias"] = torch.cat([t.take(f"{theirs}{p}_proj.bias") for p in "qkv"])
    out[ours + "out.weight"] = t.take(theirs + "o_proj.weight")
    bias = t.take_optional(theirs + "o_proj.bias")
    if bias is not None:
        out[ours + "out.bias"] = bias


def attention_out(ours: Mapping[str, Tensor], prefix: str, a: Attention, theirs: str, out: dict[str, Tensor]) -> None:
    """qkv, out -> q_proj, k_proj, v_proj, o_proj; ``a``: the attention whose tensors these are."""
    sizes = [a.heads * a.head_dim, a.kv_heads * a.head_dim, a.kv_heads * a.head_dim]
    for kind in ("weight", "bias"):
        if f"{prefix}qkv.{kind}" in ours:
            for p, part in zip("qkv", ours[f"{prefix}qkv.{kind}"].split(sizes)):
                out[f"{theirs}{p}_proj.{kind}"] = part.contiguous()
        if f"{prefix}out.{kind}" in ours:
            out[f"{theirs}o_proj.{kind}"] = ours[f"{prefix}out.{kind}"]


def gated_mlp_in(t: Tensors, theirs: str, ours: str, out: dict[str, Tensor]) -> None:
    """gate_proj, up_proj, down_proj -> up = [up ‖ gate], down."""
    for kind in ("weight", "bias"):
        gate, up = t.take_optional(f"{theirs}gate_proj.{kind}"), t.take_optional(f"{theirs}up_proj.{kind}")
        if gate is not None or up is not None:
            if gate is None or up is None:
                raise ValueError(f"{t.fn}: {theirs}gate_proj.{kind} and up_proj.{kind} come together")
            out[f"{ours}up.{kind}"] = torch.cat([up, gate])
        down = t.take(f"{theirs}down_proj.weight") if kind == "weight" else t.take_optional(f"{theirs}down_proj.bias")
        if down is not None:
            out[f"{ours}down.{kind}"] = down


def gated_mlp_out(ours: Mapping[str, Tensor], prefix: str, theirs: str, out: dict[str, Tensor]) -> None:
    for kind in ("weight", "bias"):
        if f"{prefix}up.{kind}" in ours:
            up, gate = ours[f"{prefix}up.{kind}"].chunk(2)
            out[f"{theirs}gate_proj.{kind}"], out[f"{theirs}up_proj.{kind}"] = gate.contiguous(), up.contiguous()
        if f"{prefix}down.{kind}" in ours:
            out[f"{theirs}down_proj.{kind}"] = ours[f"{prefix}down.{kind}"]


def load_exactly(fn: str, model: LanguageModel, sd: dict[str, Tensor], tied: bool) -> LanguageModel:
    """Load ``sd`` (our names) into ``model``: every tensor of the model given, with its shape, and nothing else."""
    if tied:
        sd.pop("lm_head.weight", None)
        sd["lm_head.weight"] = sd["embedding.weight"]
    ours = model.state_dict()
    missing, unexpected = sorted(set(ours) - set(sd)), sorted(set(sd) - set(ours))
    wrong = [f"{k}: {tuple(sd[k].shape)} vs {tuple(ours[k].shape)}" for k in sorted(set(sd) & set(ours))
             if sd[k].shape != ours[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{fn}: the checkpoint does not match the model built from its config: missing {missing}, "
                         f"unexpected {unexpected}, shapes (checkpoint vs model) {wrong}")
    model.load_state_dict(sd)
    return model


def take_ends(t: Tensors, embedding: str, norm_f: str, head_required: bool = False) -> dict[str, Tensor]:
    """Our state dict, begun with the checkpoint's embedding, final norm and LM head (where present: a tied model
    saves none; ``head_required``: a format whose head is always its own)."""
    sd = {"embedding.weight": t.take(embedding), "norm_f.weight": t.take(norm_f)}
    head = t.take("lm_head.weight") if head_required else t.take_optional("lm_head.weight")
    if head is not None:
        sd["lm_head.weight"] = head
    return sd


def build_loaded(fn: str, t: Tensors, sd: dict[str, Tensor], pattern: list[dict[str, Any]],
                 args: dict[str, Any]) -> LanguageModel:
    """The ``LanguageModel`` a converted config describes, with ``sd`` loaded: once every checkpoint tensor in ``t``
    has been taken."""
    t.check_all_taken()
    model = LanguageModel(vocab_size=sd["embedding.weight"].shape[0], pattern=pattern, **args)
    return load_exactly(fn, model, sd, args["tie_embeddings"])


def config_head(model: LanguageModel, architecture: str, model_type: str) -> dict[str, Any]:
    """The config.json fields every format opens with."""
    return {"architectures": [architecture], "model_type": model_type, "dtype": dtype_name(model),
            "vocab_size": model.embedding.num_embeddings, "hidden_size": model.d_model}


def put_ends(model: LanguageModel, ours: Mapping[str, Tensor], embedding: str, norm_f: str,
             head_always: bool = False) -> dict[str, Tensor]:
    """Their state dict, begun with our embedding, final norm and LM head (left out when tied, unless
    ``head_always``: a format whose head is always its own)."""
    sd = {embedding: ours["embedding.weight"], norm_f: ours["norm_f.weight"]}
    if head_always or not tied(model):
        sd["lm_head.weight"] = ours["lm_head.weight"]
    return sd


def saved(config: dict[str, Any], sd: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor], str]:
    """What a ``to_hf_*`` converter returns: (config.json, the state dict as tensors to save, the file's name)."""
    return config, {k: v.detach().contiguous() for k, v in sd.items()}, "model.safetensors"


def mamba2_args(d_model: int, d_inner: int, nheads: int, headdim: int | None, ngroups: int, d_state: int, d_conv: int,
                conv_bias: bool, bias: bool, chunk_size: int, dt_limit: Any, norm_eps: float, fn: str,
                **extra: Any) -> dict[str, Any]:
    """Our Mamba2's arguments for a checkpoint's mixer (D per head, the gate before the norm unless said)."""
    headdim = headdim if headdim is not None else d_inner // nheads
    if headdim * nheads != d_inner:
        raise ValueError(f"{fn}: the Mamba-2 heads ({nheads} x {headdim}) must fill its {d_inner} channels")
    args = dict(d_state=d_state, d_conv=d_conv, headdim=headdim, ngroups=ngroups, chunk_size=chunk_size,
                conv_bias=conv_bias, bias=bias, norm_eps=norm_eps,
                dt_limit=tuple(dt_limit) if dt_limit is not None else (0.0, math.inf))
    if d_inner % d_model == 0:
        args["expand"] = d_inner // d_model
    else:
        args["d_inner"] = d_inner
    args.update(extra)
    return args


def bamba_mamba2_args(config: Any, d_model: int, d_inner: int, norm_eps: float, fn: str,
                      **extra: Any) -> dict[str, Any]:
    """``mamba2_args`` from the ``mamba_*`` fields of Bamba's config, which Falcon-H1's config shares."""
    d_head = get(config, "mamba_d_head", "auto")
    return mamba2_args(d_model, d_inner, get(config, "mamba_n_heads", 128), None if d_head == "auto" else d_head,
                       get(config, "mamba_n_groups", 1), get(config, "mamba_d_state", 256),
                       get(config, "mamba_d_conv", 4), bool(get(config, "mamba_conv_bias", True)),
                       bool(get(config, "mamba_proj_bias", False)), get(config, "mamba_chunk_size", 256),
                       get(config, "time_step_limit"), norm_eps, fn, **extra)


def bamba_mamba2_config(mamba: dict[str, Any]) -> dict[str, Any]:
    """The ``mamba_*`` fields of Bamba's config.json (and Falcon-H1's) for a ``mamba2_layout``."""
    return {"mamba_n_heads": mamba["nheads"], "mamba_d_head": mamba["headdim"], "mamba_n_groups": mamba["ngroups"],
            "mamba_d_state": mamba["d_state"], "mamba_d_conv": mamba["d_conv"],
            "mamba_chunk_size": mamba["chunk_size"], "mamba_conv_bias": mamba["conv_bias"],
            "mamba_proj_bias": mamba["bias"], "time_step_limit": dt_limit_json(mamba["dt_limit"])}


def mamba2_layout(m: Mamba2) -> dict[str, Any]:
    """What a checkpoint's config must say of a Mamba2 mixer (compared across layers: they share one config)."""
    return dict(d_inner=m.d_inner, nheads=m.nheads, headdim=m.headdim, ngroups=m.ngroups, d_state=m.d_state,
                d_conv=m.d_conv, conv_bias=m.conv1d.bias is not None, bias=m.in_proj.bias is not None,
                out_bias=m.out_proj.bias is not None, chunk_size=m.chunk_size, dt_limit=tuple(m.dt_limit),
                D_has_hdim=m.D_has_hdim, rmsnorm=m.rmsnorm, causal=m.causal,
                norm_before_gate=m.norm is not None and m.norm.norm_before_gate,
                norm_eps=m.norm.eps if m.norm is not None else None, multipliers=m.in_proj_multipliers)


def is_mamba_ssm_mixer(mamba: dict[str, Any], norm_eps: float) -> bool:
    """Whether a ``mamba2_layout`` is mamba-ssm's Mamba-2 mixer, the one transformers' Bamba, Nemotron-H and Zamba2
    build: D per head, a causal convolution, the gated norm (eps ``norm_eps``) after the gate, no in_proj
    multipliers, and a bias on out_proj exactly when in_proj has one."""
    return (not mamba["D_has_hdim"] and mamba["rmsnorm"] and not mamba["norm_before_gate"]
            and mamba["norm_eps"] == norm_eps and mamba["multipliers"] is None and mamba["out_bias"] == mamba["bias"]
            and mamba["causal"])


def attention_layout(a: FullAttention) -> dict[str, Any]:
    at = a.attn
    return dict(heads=at.heads, kv_heads=at.kv_heads, head_dim=at.head_dim, rotary=at.rotary,
                rotary_base=at.rotary_base, rotary_dim=at.rotary_dim, interleaved=at.rotary_interleaved,
                scale=at.scale, bias=at.qkv.bias is not None, out_bias=at.out.bias is not None)


def mlp_layout(m: Any) -> dict[str, Any]:
    """What a checkpoint's config must say of an MLP (``modules.MLP``)."""
    return dict(hidden=m.hidden, gated=m.gated, activation=m.activation, bias=m.up.bias is not None,
                multipliers=(m.gate_multiplier, m.output_multiplier))


def one(layouts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The layout every layer shares, or None (a config says it once for all layers)."""
    return layouts[0] if layouts and all(x == layouts[0] for x in layouts) else None


def dt_limit_json(limit: tuple[float, float]) -> list[Any]:
    """A Δ limit as transformers writes it in config.json (inf as {"__float__": "Infinity"})."""
    return [v if math.isfinite(v) else {"__float__": "Infinity"} for v in limit]


def dtype_name(model: LanguageModel) -> str:
    return str(model.embedding.weight.dtype).removeprefix("torch.")


def tied(model: LanguageModel) -> bool:
    return model.lm_head.weight is model.embedding.weight


def has_qwen3_5_parts(model: nn.Module) -> bool:
    """Whether the model has a part only Qwen3.5's format says (a norm scaling by 1 + weight, attention with an
    output gate or q/k norms): every other format's saver refuses such a model rather than drop the part."""
    return any((isinstance(m, RMSNorm) and m.unit_offset)
               or (isinstance(m, Attention) and (m.output_gate or m.q_norm is not None)) for m in model.modules())
