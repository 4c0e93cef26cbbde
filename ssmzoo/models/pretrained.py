"""Reading and writing checkpoint folders (``config.json`` + weights), offline; formats are dispatched through
the registry of ``convert.py``.

Weights are read from ``model.safetensors``, sharded ``model.safetensors.index.json``, ``pytorch_model.bin``
(mamba-ssm's ``save_pretrained``) or its sharded index, in that order of preference; written as the format
says (safetensors, or ``pytorch_model.bin`` for mamba-ssm).
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .convert import checkpoint_format, converters, get_converter
from .lm import LanguageModel

CONFIG = "config.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _read_index(file: Path) -> list[Path]:
    """The shard files a ``*.index.json`` names, each inside the index's folder (a ValueError otherwise)."""
    try:
        index = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"from_pretrained: {file} is not valid JSON ({error}); is it truncated?") from error
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise ValueError(f"from_pretrained: {file} has no \"weight_map\" object of tensor names to shard file names")
    folder = file.parent.resolve()
    shards = []
    for name in sorted(set(weight_map.values())):
        shard = (file.parent / name).resolve()  # symbolic links followed: the file itself must be inside
        if Path(name).is_absolute() or not shard.is_relative_to(folder) or shard == folder:
            raise ValueError(f"from_pretrained: {file} names the shard {name!r}, which is not a file inside {folder}; "
                             "shards must lie in the checkpoint folder")
        if not shard.is_file():
            raise FileNotFoundError(f"from_pretrained: {file} names the shard {name!r}, but {shard} does not exist")
        shards.append(shard)
    return shards


def _read_file(file: Path) -> dict[str, Tensor]:
    """The tensors of one weights file; a ValueError naming it if it cannot be read."""
    if file.stat().st_size == 0:
        raise ValueError(f"from_pretrained: {file} is empty (0 bytes); copy the checkpoint again")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except Exception as error:  # noqa: BLE001 - safetensors raises its own SafetensorError (and OSError)
            raise ValueError(f"from_pretrained: {file} is not a readable safetensors file, it is truncated or "
                             f"damaged ({type(error).__name__}: {error})") from error
    try:
        weights = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"from_pretrained: {file} is refused: it holds objects other than tensors, which would run "
                         f"code while loading (read with weights_only=True)") from error
    except (EOFError, RuntimeError, zipfile.BadZipFile) as error:
        raise ValueError(f"from_pretrained: {file} is not a readable PyTorch file, it is truncated or damaged "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from error
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in weights.items()):
        raise ValueError(f"from_pretrained: {file} holds a {type(weights).__name__}, not a state dict of tensors")
    return weights


def _read_weights(file: Path) -> dict[str, Tensor]:
    if not file.name.endswith(".index.json"):
        return _read_file(file)
    weights: dict[str, Tensor] = {}
    for shard in _read_index(file):
        weights.update(_read_file(shard))
    return weights


def _check_finite(weights: dict[str, Tensor], file: Path) -> None:
    bad = [name for name, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        shown = ", ".join(bad[:8]) + (f", ... ({len(bad)} in all)" if len(bad) > 8 else "")
        raise ValueError(f"from_pretrained: {file} holds NaN or infinite weights in {shown}; a model with them "
                         "computes NaN (was it saved after training diverged?)")


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json, state dict) of a checkpoint folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"from_pretrained: {folder} is not a folder; pass a local checkpoint folder (config.json "
                                f"and weights); nothing is downloaded")
    if not (folder / CONFIG).is_file():
        raise FileNotFoundError(f"from_pretrained: no {CONFIG} in {folder}")
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"from_pretrained: {folder / CONFIG} is not valid JSON ({error}); is it truncated?") from error
    if not isinstance(config, dict):
        raise ValueError(f"from_pretrained: {folder / CONFIG} holds a JSON {type(config).__name__}, not an object of "
                         "settings")
    file = next((folder / name for name in WEIGHTS if (folder / name).is_file()), None)
    if file is None:
        raise FileNotFoundError(f"from_pretrained: no weights in {folder} (looked for {', '.join(WEIGHTS)})")
    weights = _read_weights(file)
    _check_finite(weights, file)
    return config, weights


def load_pretrained(path: str | Path, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> LanguageModel:
    config, state_dict = read_checkpoint(path)
    try:
        model = get_converter(checkpoint_format(config)).load(config, state_dict)
    except ValueError as error:  # the converter's message, with the folder it was about
        raise ValueError(f"from_pretrained: {Path(path).expanduser()}: {error}") from error
    return model.to(device=device, dtype=dtype).eval()


def save_pretrained(model: LanguageModel, path: str | Path, format: str | None = None) -> Path:
    """Write ``model`` in ``format`` (a registered name), default the first format that can express it
    ("ssmzoo" last). Returns the folder."""
    if not isinstance(model, LanguageModel):
        raise ValueError(f"save_pretrained: model must be a LanguageModel, got {type(model).__name__}")
    if format is not None:
        saved = get_converter(format).save
        written = saved(model) if saved is not None else None
        if written is None:
            raise ValueError(f"save_pretrained: format {format!r} cannot express this model ({model.config})")
    else:
        order = [c for name, c in converters().items() if name != "ssmzoo" and c.save is not None]
        written = next(filter(None, (c.save(model) for c in order)), None) or get_converter("ssmzoo").save(model)
    config, state_dict, weights = written
    folder = Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    if weights.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state_dict, str(folder / weights), metadata={"format": "pt"})
    else:
        torch.save(state_dict, folder / weights)
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return folder
