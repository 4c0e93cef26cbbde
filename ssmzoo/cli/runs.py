"""Run folders and checkpoint paths of the ``ssmzoo`` command.

A run lives in ``<trainer.default_root_dir>/<run name>/version_<n>/``: logs, ``config.yaml``,
``checkpoints/{best-*,last}.ckpt`` and ``results.json``. ``<n>`` is taken with ``os.mkdir``, which fails
when the folder exists, so two runs started at the same moment never share a folder.
"""

from __future__ import annotations

import contextlib
import csv
import os
import pickle
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

VERSION = re.compile(r"version_(\d+)")
LAST = "last.ckpt"


def run_name(config_paths: Sequence[str]) -> str:
    """``<config folder>_<config stem>`` of the last config file (``listops_s4d_small``), else ``default``."""
    if not config_paths:
        return "default"
    path = Path(config_paths[-1])
    return f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem


def _versions(parent: Path) -> list[int]:
    if not parent.is_dir():
        return []
    return sorted(int(m.group(1)) for p in parent.iterdir() if (m := VERSION.fullmatch(p.name)) and p.is_dir())


def allocate_version(parent: Path) -> int:
    """Create ``parent/version_<n>`` for the smallest free ``n`` above the existing ones and return ``n``.

    ``os.mkdir`` either creates the folder or fails because it exists, so of two processes asking at once
    each gets its own folder (one of them retries with the next number)."""
    parent.mkdir(parents=True, exist_ok=True)
    version = max(_versions(parent), default=-1) + 1
    while True:
        try:
            os.mkdir(parent / f"version_{version}")
            return version
        except FileExistsError:
            version += 1


def find_last_checkpoint(root: Path, name: str) -> Path:
    """``last.ckpt`` of the newest run of ``name`` (highest version that has one)."""
    parent = root / name
    for version in reversed(_versions(parent)):
        candidate = parent / f"version_{version}" / "checkpoints" / LAST
        if candidate.is_file():
            return candidate
    runs = ", ".join(f"version_{v}" for v in _versions(parent)) or "no runs"
    raise FileNotFoundError(
        f"--ckpt_path last: no checkpoint to resume: looked for {parent}/version_*/checkpoints/{LAST} and found "
        f"{runs} without one. The run name comes from the config file name (or --run_name) and the folder from "
        "--trainer.default_root_dir; start without --ckpt_path, or pass the path of a .ckpt file."
    )


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run folder that holds ``checkpoint`` (``.../version_<n>/checkpoints/x.ckpt``), or None."""
    if checkpoint.parent.name == "checkpoints" and VERSION.fullmatch(checkpoint.parent.parent.name):
        return checkpoint.parent.parent
    return None


def check_checkpoint(path: Path) -> None:
    """Raise an error naming ``path`` unless it is a readable Lightning checkpoint.

    Reads the file's index and objects as Lightning will (``weights_only``), with tensor data mapped rather
    than read, so an empty, truncated or corrupt file is reported here and not as a bare ``EOFError`` or
    unpickling error in the middle of the run."""
    if not path.exists():
        raise FileNotFoundError(f"--ckpt_path {path}: no such file")
    if not path.is_file():
        raise ValueError(f"--ckpt_path {path}: not a file; pass the path of a .ckpt file")
    if path.stat().st_size == 0:
        raise ValueError(
            f"--ckpt_path {path}: the file is empty (0 bytes), so it is not a checkpoint (was its run killed "
            f"while writing it?); pass another checkpoint from {path.parent}"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (EOFError, RuntimeError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"--ckpt_path {path}: cannot be read as a checkpoint, it is truncated or corrupt "
            f"({type(error).__name__}: {error}); pass another checkpoint from {path.parent}"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"--ckpt_path {path}: a PyTorch file but not a Lightning checkpoint (no state_dict)")


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it keeps an existing ``metrics.csv`` (Lightning's deletes it when the
    folder is not empty, which would erase the first part of a resumed run) and appends to it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                # the writer rewrites the file when new columns appear; it must know the old ones
                self.metrics_keys = next(csv.reader(f), [])


class RunCSVLogger(CSVLogger):
    """CSVLogger whose ``metrics.csv`` survives a resume in the same run folder."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


# What a run writes into its folder before its first checkpoint: the config (LightningCLI), the logs (CSV and
# TensorBoard) and the hyperparameters. Only these are removed when a run fails that early.
RUN_FILES = re.compile(r"config\.yaml|hparams\.yaml|metrics\.csv|events\.out\.tfevents\..*|samples\.txt|tokenizer\.json")


def remove_failed_run(folder: Path) -> bool:
    """Remove the run folder ``folder`` of a run that failed before it wrote a checkpoint or results: the files
    the run wrote (``RUN_FILES``), its empty ``checkpoints/``, then the folder if nothing else is left. Never
    touches a folder holding a checkpoint or results, nor any file another program put there. Returns whether
    the folder is gone."""
    if not folder.is_dir():
        return False
    checkpoints = folder / "checkpoints"
    if (folder / "results.json").exists() or (checkpoints.is_dir() and any(checkpoints.iterdir())):
        return False
    for entry in folder.iterdir():
        if entry.is_file() and RUN_FILES.fullmatch(entry.name):
            entry.unlink()
    with contextlib.suppress(OSError):
        checkpoints.rmdir()  # only when empty
    try:
        folder.rmdir()  # only when empty: anything we did not write stays, and so does the folder
    except OSError:
        return False
    return True
