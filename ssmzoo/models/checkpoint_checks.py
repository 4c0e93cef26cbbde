"""Checks of a checkpoint against its config.json, for the converters (``convert.py``, ``convert_mamba2.py``):
a missing config key, a config value the weights disagree with, a missing or extra tensor, each reported as a
ValueError that names the config key or the tensor under the checkpoint format's own names.

When the tensors' shapes disagree with a model built from the config, the config key at fault is found by
building the model again (on the meta device: no memory, no init) with one key changed at a time, to values read
off the checkpoint's shapes: a key whose change makes every shape agree is the one named."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .lm import LanguageModel

_LAYER = re.compile(r"^layers\.(\d+)\.")
_MAX_SHOWN = 6


def require_keys(fn: str, config: Any, keys: Iterable[str], what: str) -> None:
    """A ValueError naming the keys of ``keys`` that ``config`` (a config.json dict or a config object) lacks."""
    has = (lambda k: k in config) if isinstance(config, Mapping) else (lambda k: getattr(config, k, None) is not None)
    missing = [k for k in keys if not has(k)]
    if missing:
        raise ValueError(f"{fn}: config.json lacks {', '.join(repr(k) for k in missing)}, which {what} requires")


def _get_path(kwargs: Mapping[str, Any], path: str) -> Any:
    head, _, rest = path.partition(".")
    value = kwargs.get(head)
    return _get_path(value, rest) if rest and isinstance(value, Mapping) else None if rest else value


def _set_path(kwargs: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    head, _, rest = path.partition(".")
    out = dict(kwargs)
    out[head] = _set_path(out.get(head) or {}, rest, value) if rest else value
    return out


def _shapes(kwargs: Mapping[str, Any]) -> dict[str, tuple[int, ...]] | None:
    """The state dict's shapes of ``LanguageModel(**kwargs)``, or None if these arguments build no model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for device in ("meta", "cpu"):  # some layers' init cannot run on the meta device
            try:
                with torch.device(device):
                    model = LanguageModel(**kwargs)
            except Exception:  # noqa: BLE001 - a candidate value that builds no model is simply not the answer
                continue
            return {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _candidates(value: int, target: Mapping[str, tuple[int, ...]], ours: Mapping[str, tuple[int, ...]]) -> list[int]:
    """Values a wrong integer config entry may have been meant to be, read off the disagreeing shapes."""
    found: list[int] = []
    layers = {int(m.group(1)) for k in target if (m := _LAYER.match(k))}
    if layers:
        found.append(max(layers) + 1)
    for key in sorted(set(target) & set(ours)):
        theirs, mine = target[key], ours[key]
        if theirs == mine or len(theirs) != len(mine):
            continue
        for c, m in zip(theirs, mine):
            if c != m:
                found.append(c)
                if (value * c) % m == 0:  # a width proportional to the entry
                    found.append(value * c // m)
                # a width that is a sum with the entry k times in it (Mamba-2's conv width: d_inner + 2·ngroups·d_state)
                found += [value + (c - m) // k for k in (1, 2, 4, 8, 3) if (c - m) % k == 0]
    out = []
    for v in found:
        if 0 < v <= 1 << 22 and v != value and v not in out:
            out.append(v)
    return out[:24]


def _fixes(kwargs: Mapping[str, Any], config_keys: Mapping[str, str], target: Mapping[str, tuple[int, ...]],
           ours: Mapping[str, tuple[int, ...]]) -> list[tuple[str, Any, int]]:
    """(config key, its value, the value the weights fit) for each single integer entry whose change makes every
    shape agree."""
    fixes = []
    for path, key in config_keys.items():
        value = _get_path(kwargs, path)
        if not _is_int(value):
            continue
        for candidate in _candidates(value, target, ours):
            if _shapes(_set_path(kwargs, path, candidate)) == target:
                fixes.append((key, value, candidate))
                break
    return fixes


def _depends_on(kwargs: Mapping[str, Any], config_keys: Mapping[str, str], wrong: Iterable[str],
                absent: Iterable[str], ours: Mapping[str, tuple[int, ...]]) -> list[str]:
    """The config keys (integer entries) whose value changes the shape of a tensor of ``wrong`` or whether a
    tensor of ``absent`` (missing from the checkpoint or from the model) is in the model."""
    wrong, absent = list(wrong), list(absent)
    keys = []
    for path, key in config_keys.items():
        value = _get_path(kwargs, path)
        if not _is_int(value):
            continue
        for other in (value + 1, value - 1, value * 2):  # up and down: a count shows either way
            shapes = _shapes(_set_path(kwargs, path, other)) if other > 0 else None
            if shapes is not None and (
                    any(t in shapes and shapes[t] != ours[t] for t in wrong)
                    or any((t in shapes) != (t in ours) for t in absent)):
                keys.append(key)
                break
    return keys


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_SHOWN else "")


def build_checked(
    fn: str,
    what: str,
    kwargs: dict[str, Any],
    state_dict: dict[str, Tensor],
    config_keys: Mapping[str, str],
    their_name: Callable[[str], str],
) -> LanguageModel:
    """``LanguageModel(**kwargs)`` with ``state_dict`` (our names) loaded, or a ValueError that says what disagrees.

    Args:
        fn, what: the converter's name and the format's description, for messages ("a Hugging Face Mamba
            checkpoint").
        config_keys: the argument ``kwargs`` got from each config.json key: ``{"d_model": "hidden_size",
            "layer_args.d_state": "state_size", ...}``.
        their_name: a tensor's name in the checkpoint file, from ours.
    """
    try:
        model = LanguageModel(**kwargs)
    except (ValueError, TypeError) as error:
        message = str(error)
        named = [key for path, key in config_keys.items() if re.search(rf"\b{re.escape(path.split('.')[-1])}\b", message)]
        where = f" (config.json: {', '.join(named)})" if named else ""
        raise ValueError(f"{fn}: config.json does not describe a valid model{where}: {message}") from error
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    target = {k: tuple(v.shape) for k, v in state_dict.items()}
    if ours == target:
        model.load_state_dict(state_dict)
        return model

    missing, unexpected = sorted(set(ours) - set(target)), sorted(set(target) - set(ours))
    wrong = [k for k in sorted(set(ours) & set(target)) if ours[k] != target[k]]
    keys = _depends_on(kwargs, config_keys, wrong, missing + unexpected, ours)
    fixes = _fixes(kwargs, {p: k for p, k in config_keys.items() if k in keys}, target, ours)
    example = (f"{their_name(wrong[0])} is {target[wrong[0]]} in the checkpoint, {ours[wrong[0]]} in the model "
               "config.json describes" if wrong else
               f"the checkpoint lacks {_listed([their_name(k) for k in missing])}" if missing else
               f"the checkpoint has tensors the model lacks: {_listed([their_name(k) for k in unexpected])}")
    if fixes:
        said = "; ".join(f"config.json has {key}={value!r}, but the weights were made with {key}={fit}"
                         for key, value, fit in fixes)
        raise ValueError(f"{fn}: {said} ({example})")
    parts = []
    if wrong:
        shapes = [f"{their_name(k)} {target[k]} vs {ours[k]}" for k in wrong]
        parts.append(f"shapes disagree (checkpoint vs config.json's model): {_listed(shapes)}"
                     + (f"; these follow config.json's {', '.join(keys)}" if keys else ""))
    if missing:
        parts.append(f"missing tensors: {_listed([their_name(k) for k in missing])}")
    if unexpected:
        parts.append(f"tensors with no place in the model: {_listed([their_name(k) for k in unexpected])}")
    raise ValueError(f"{fn}: the weights do not fit {what} as config.json describes it: {'; '.join(parts)}")
