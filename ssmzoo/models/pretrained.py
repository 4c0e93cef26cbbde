"""Reading and writing checkpoint folders (``config.json`` + weights), offline; formats are dispatched through
the registry of ``convert.py``.

Weights are read from ``model.safetensors``, sharded ``model.safetensors.index.json``, ``pytorch_model.bin``
(mamba-ssm's ``save_pretrained``) or its sharded index, in that order of preference; written as the format
says (safetensors, or ``pytorch_model.bin`` for mamba-ssm).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .convert import checkpoint_format, converters, get_converter
from .lm import LanguageModel, register_checkpoint_io

CONFIG = "config.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _read_weights(file: Path) -> dict[str, Tensor]:
    if file.name.endswith(".index.json"):
        index = json.loads(file.read_text())
        weights: dict[str, Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            weights.update(_read_weights(file.parent / shard))
        return weights
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    return torch.load(file, map_location="cpu", weights_only=True)


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json, state dict) of a checkpoint folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"from_pretrained: {folder} is not a folder; pass a local checkpoint folder (config.json "
                                f"and weights); nothing is downloaded")
    if not (folder / CONFIG).is_file():
        raise FileNotFoundError(f"from_pretrained: no {CONFIG} in {folder}")
    config = json.loads((folder / CONFIG).read_text())
    file = next((folder / name for name in WEIGHTS if (folder / name).is_file()), None)
    if file is None:
        raise FileNotFoundError(f"from_pretrained: no weights in {folder} (looked for {', '.join(WEIGHTS)})")
    return config, _read_weights(file)


def load_pretrained(path: str | Path, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> LanguageModel:
    config, state_dict = read_checkpoint(path)
    model = get_converter(checkpoint_format(config)).load(config, state_dict)
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


register_checkpoint_io(load_pretrained, save_pretrained)
