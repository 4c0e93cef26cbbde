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
from .lm import LanguageModel, register_checkpoint_io

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
    if is_run(path):  # a run of `ssmzoo fit` (its folder or a .ckpt): see load_run
        return load_run(path).to(device=device, dtype=dtype).eval()
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


# -- runs of `ssmzoo fit`: a run folder or one of its Lightning checkpoints -------------------------------------

CKPT_SUFFIX = ".ckpt"


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a Lightning checkpoint (``.ckpt``) or a run folder of ``ssmzoo fit`` (``checkpoints/``)
    rather than a checkpoint folder with ``config.json``."""
    path = Path(path).expanduser()
    return (path.is_file() and path.suffix == CKPT_SUFFIX) or (
        path.is_dir() and (path / "checkpoints").is_dir() and not (path / CONFIG).is_file())


def run_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint of a run folder (``.../version_<n>``): the one its ``results.json`` tested (the best by the
    task's metric), else the newest ``best-*.ckpt``, else ``last.ckpt``."""
    folder = Path(run_dir).expanduser().resolve()
    checkpoints = folder / "checkpoints"
    if not checkpoints.is_dir():
        raise FileNotFoundError(f"{folder}: not a run folder of `ssmzoo fit` (no checkpoints/ in it); pass a run "
                                f"folder (runs/<name>/version_<n>) or a .ckpt file")
    results = folder / "results.json"
    if results.is_file():
        try:
            tested = json.loads(results.read_text()).get("checkpoint")
        except (json.JSONDecodeError, AttributeError):
            tested = None
        if isinstance(tested, str) and Path(tested).name and (checkpoints / Path(tested).name).is_file():
            return checkpoints / Path(tested).name  # looked up in this folder: a moved run still loads
    best = sorted(checkpoints.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    if (checkpoints / "last.ckpt").is_file():
        return checkpoints / "last.ckpt"
    raise FileNotFoundError(f"{checkpoints}: no checkpoint (best-*.ckpt or last.ckpt); the run wrote none yet")


def _model_class(class_path: Any, where: Path) -> type:
    """The class ``class_path`` names, admitted only among ``ssmzoo.models``' exports: a checkpoint is a file a
    user hands us, so it may name nothing else to be built."""
    from .. import models

    prefix = "ssmzoo.models."
    name = class_path[len(prefix):] if isinstance(class_path, str) and class_path.startswith(prefix) else None
    name = name.rpartition(".")[2] if name else None  # ssmzoo.models.lm.LanguageModel is LanguageModel too
    cls = getattr(models, name, None) if name in models.__all__ else None
    if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise ValueError(f"{where}: the checkpoint's model is {class_path!r}; only the models of ssmzoo.models "
                         f"load from a run ({', '.join(models.__all__)})")
    return cls


def _plain(value: Any, where: Path, key: str) -> Any:
    """Constructor arguments as plain values (no nested class to instantiate)."""
    if isinstance(value, dict):
        if "class_path" in value:
            raise ValueError(f"{where}: model argument {key} names a class ({value['class_path']!r}); a run's "
                             "model loads with plain arguments only")
        return {k: _plain(v, where, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, where, key) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"{where}: model argument {key} is a {type(value).__name__}; expected plain values")


def load_run(path: str | Path) -> torch.nn.Module:
    """The trained network of a run of ``ssmzoo fit``: ``path`` is its folder (``runs/<name>/version_<n>``: the
    checkpoint its results.json tested, else the newest best, else last.ckpt) or a ``.ckpt`` file.

    The checkpoint is read with ``weights_only=True`` (tensors and plain values, nothing unpickled), the model is
    the ``ssmzoo.models`` class its hyperparameters name, built from their plain arguments (the values the data
    decided, such as the vocabulary, are among them), and its weights are the task's ``model.*`` tensors. In
    eval mode, on the CPU."""
    path = Path(path).expanduser().resolve()
    file = path if path.is_file() else run_checkpoint(path)
    if file.stat().st_size == 0:
        raise ValueError(f"{file}: the checkpoint is empty (0 bytes)")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, a pickle naming a global: never loaded, reported by name
        raise ValueError(f"{file}: cannot be read as a checkpoint with weights_only=True ({type(error).__name__}: "
                         f"{error})") from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{file}: not a Lightning checkpoint (no state_dict)")
    spec = (checkpoint.get("hyper_parameters") or {}).get("model")
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{file}: the checkpoint's hyperparameters do not describe its model (hyper_parameters.model "
                         "with class_path and init_args, as `ssmzoo fit` writes them)")
    cls = _model_class(spec["class_path"], file)
    init_args = _plain(spec.get("init_args") or {}, file, "init_args")
    try:
        model = cls(**init_args)
    except TypeError as error:
        raise ValueError(f"{file}: {cls.__name__} does not take the checkpoint's arguments ({error})") from error
    prefix = "model."
    weights = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(f"{file}: the weights do not fit {cls.__name__}({', '.join(sorted(init_args))}): missing "
                         f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return model.eval()


register_checkpoint_io(load_pretrained, save_pretrained)
