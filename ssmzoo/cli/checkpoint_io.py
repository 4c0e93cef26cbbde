"""How the ``ssmzoo`` command writes and reads checkpoints: a Lightning ``CheckpointIO`` plugin.

Writing: Lightning's ``TorchCheckpointIO`` (2.6) saves through an fsspec transaction whose temporary file lives
in ``$TMPDIR``; when that is another filesystem than the run folder (``/tmp`` on tmpfs), the finished file is
*copied* over ``last.ckpt``, so a kill during the copy leaves it truncated and the run cannot resume. Here the
checkpoint goes to a temporary file in the checkpoint's own folder, is fsynced and renamed over the old one
(:func:`ssmzoo.files.atomic_write`): a kill at any moment leaves the previous checkpoint or the new one, whole.

Reading: ``weights_only=True`` unless a caller explicitly asks otherwise. torch < 2.6 (which ``pyproject.toml``
allows) defaults to unpickling anything, and Lightning passes its own default (None) through, so without this a
crafted checkpoint reached through ``--ckpt_path hpc`` or ``trainer.test(ckpt_path=...)`` would run its code.
ssmzoo's checkpoints hold only tensors and plain data (``RNGStates`` stores its states that way).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH

from ..files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes local checkpoints atomically in their own folder and reads with
    ``weights_only=True`` by default (see the module docstring). Remote paths (``s3://...``) keep Lightning's
    writing."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}")
        if not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path)
        atomic_write(os.fspath(path), lambda f: torch.save(checkpoint, f))

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        weights_only = True if weights_only is None else weights_only
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except pickle.UnpicklingError as error:
            if not weights_only:
                raise
            raise ValueError(
                f"checkpoint {path}: refused: it holds objects other than tensors and plain data, which would run "
                f"code while loading ({_reason(error)}). ssmzoo reads checkpoints with weights_only=True; one you "
                "made yourself and trust can be read with torch.load(..., weights_only=False) outside the CLI"
            ) from error
        except (EOFError, RuntimeError, zipfile.BadZipFile) as error:
            if isinstance(error, RuntimeError) and "PytorchStreamReader" not in str(error):
                raise  # not about the file (a CUDA map_location on a CPU machine, ...)
            raise ValueError(f"checkpoint {path}: cannot be read, it is truncated or corrupt ({_reason(error)})") \
                from error


def _reason(error: BaseException) -> str:
    """The informative line of torch's (long) loading errors."""
    text = str(error)
    for marker in ("WeightsUnpickler error: ", "PytorchStreamReader "):
        if marker in text:
            text = text[text.index(marker):]
            break
    return f"{type(error).__name__}: {text.splitlines()[0].split(' Please use')[0].strip() if text else ''}"


def with_atomic_checkpoint_io(plugins: Any) -> list[Any]:
    """``plugins`` (a Trainer's ``plugins=`` value: None, one plugin or a list) with an
    :class:`AtomicCheckpointIO` added, unless it already holds a ``CheckpointIO`` (the user's choice stands)."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins
