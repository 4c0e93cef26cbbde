"""Callbacks that keep a run's work: ``last.ckpt`` always the latest state, and the random states in it.

With both, a run killed at any point and resumed from ``last.ckpt`` ends with the same weights, bit for bit,
as one that was never interrupted (the data order is the other half: ``ssmzoo.data.loader``).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import CombinedLoader

from .runs import LAST


class LastCheckpoint(Checkpoint):
    """Writes ``<dirpath>/last.ckpt``: every ``every_n_train_steps`` optimizer steps, after every validation
    and when training ends or stops, whether or not the monitored metric improved.

    Lightning's ``ModelCheckpoint(save_last=True)`` (2.6) rewrites ``last.ckpt`` only when it also saves a
    top-k checkpoint, so the last steps' weights were saved nowhere. Being a ``Checkpoint``, this callback
    runs after the other callbacks, so the file holds their updated state (the new best path among them).

    The file is written by the strategy's ``CheckpointIO``; under the ``ssmzoo`` command that is
    :class:`ssmzoo.cli.checkpoint_io.AtomicCheckpointIO`, so the previous ``last.ckpt`` stays whole until the new
    one is (give a Trainer of your own ``plugins=[AtomicCheckpointIO()]`` for the same).

    Args:
        every_n_train_steps: also write every this many optimizer steps, so a killed run loses at most
            that many (0: only after validation and at the end).
        dirpath: the folder; default the first ModelCheckpoint's (``<run>/checkpoints``).
    """

    def __init__(self, every_n_train_steps: int = 500, dirpath: str | None = None) -> None:
        if not isinstance(every_n_train_steps, int) or isinstance(every_n_train_steps, bool) or every_n_train_steps < 0:
            raise ValueError(f"LastCheckpoint: every_n_train_steps must be an int >= 0, got {every_n_train_steps!r}")
        self.every_n_train_steps = every_n_train_steps
        self.dirpath = dirpath
        self._saved_step: int | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_train_steps=self.every_n_train_steps)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.dirpath is None:
            best = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
            if best is not None and best.dirpath is not None:
                dirpath = best.dirpath
            else:
                dirpath = os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints")
            self.dirpath = trainer.strategy.broadcast(dirpath)

    @property
    def path(self) -> str:
        assert self.dirpath is not None, "LastCheckpoint.path is known once the trainer has set it up"
        return os.path.join(self.dirpath, LAST)

    def _save(self, trainer: Trainer) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        # the whole state (optimizer, loops, callbacks): resuming needs it; said outright, Lightning logs nothing
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_train_steps and step % self.every_n_train_steps == 0 and step != self._saved_step:
            self._save(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer)  # even at a step saved already: validation changed the loop and best-checkpoint state

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step != self._saved_step:  # an epoch without validation
            self._save(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step != self._saved_step:
            self._save(trainer)


class RNGStates(Callback):
    """Puts the global random states (torch, CUDA, numpy, Python) into every checkpoint and restores them when
    training resumes, just before the first training step, so dropout and anything else drawing from
    them continues as if the run had never stopped. Stored as tensors and lists, which checkpoints loaded
    with ``weights_only`` accept."""

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        version, python_state, gauss_next = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(position), int(has_gauss),
                      float(cached_gaussian)],
            "python": [version, list(python_state), gauss_next],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state, self._to_restore = self._to_restore, None
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        name, keys, position, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        version, python_state, gauss_next = state["python"]
        random.setstate((version, tuple(python_state), gauss_next))


class LoaderPosition(Callback):
    """Gives the training DataLoaders their saved position when training resumes.

    Lightning saves a stateful loader's ``state_dict`` in every checkpoint, but (2.6, issue
    Lightning-AI/pytorch-lightning#20550) never gives it back when ``configure_optimizers`` reads
    ``trainer.estimated_stepping_batches`` (ours do, for the LR schedule): that builds the loaders before the
    checkpoint is restored, and the fit loop then skips its own restore. This callback reads the states from
    the checkpoint and loads them just before the first training step; the loaders of ``ssmzoo.data.loader``
    decide their order at the first batch, so this is in time (and harmless if Lightning loaded them too)."""

    def __init__(self) -> None:
        self._states: list[dict[str, Any]] | None = None

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        states, self._states = self._states, None
        if not states or trainer.train_dataloader is None:
            return
        loaders = [loader for loader in CombinedLoader(trainer.train_dataloader).flattened
                   if callable(getattr(loader, "load_state_dict", None)) and callable(getattr(loader, "state_dict", None))]
        if len(loaders) != len(states):
            raise ValueError(
                f"the checkpoint holds the positions of {len(states)} training DataLoaders, this run has "
                f"{len(loaders)} that can take one; resume with the data configuration the run was started with"
            )
        for loader, state in zip(loaders, states):
            loader.load_state_dict(state)
