"""Passkey retrieval as a LightningModule: next-token cross-entropy on the asked positions only.

Batches are dicts (``ssmzoo.data.synthetic.passkey``): input_ids (batch, length), targets (batch, length)
with −100 where nothing is asked. A passkey counts as retrieved when every one of its digits is the
argmax at its position (teacher forcing; this is exactly when greedy decoding from the question writes
the whole passkey, since each right digit is the next step's input). Optimisation as the other tasks:
AdamW with the layers' tagged groups, linear warmup then cosine decay per step.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..optim import param_groups
from .base import Task
from .schedule import warmup_cosine, warmup_steps_from

IGNORE_INDEX = -100


class PasskeyTask(Task):
    """Train and evaluate a causal model (input_ids -> logits, e.g. :class:`ssmzoo.models.RAMba` or
    :class:`ssmzoo.models.LanguageModel`) on passkey retrieval.

    Args:
        model: the network; its ``vocab_size`` comes from the data.
        lr, weight_decay, betas: AdamW (tagged SSM parameters keep their own lr and no weight decay).
        warmup: linear warmup: a fraction of all training steps when < 1, else a step count.

    Logs ``train/loss`` and for ``val``/``test``: ``acc`` (passkeys retrieved whole), ``digit_acc`` (digits
    right) and ``loss``. Checkpoints keep the highest ``val/acc``.
    """

    monitor = "val/acc"
    monitor_mode = "max"
    headline = {"test_acc": "test/acc", "test_digit_acc": "test/digit_acc"}

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        warmup: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.98),
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"PasskeyTask: model must be an nn.Module mapping input_ids to logits, got "
                             f"{type(model).__name__}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"PasskeyTask: lr must be a number > 0, got {lr!r}")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
            raise ValueError(f"PasskeyTask: weight_decay must be a number >= 0, got {weight_decay!r}")
        warmup_steps_from(warmup, 1)  # validates warmup now rather than when training starts
        # As ClassificationTask: under the CLI the hparams are the config; built in Python, the module's
        # weights are in the state dict, so it is dropped from the hparams.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        if isinstance(self.hparams.get("model"), nn.Module):
            del self.hparams["model"]
        self.model = model
        self.lr, self.weight_decay, self.warmup, self.betas = lr, weight_decay, warmup, tuple(betas)
        self._sums: dict[str, Tensor] = {}

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids)

    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor]:
        if not isinstance(batch, dict) or "input_ids" not in batch or "targets" not in batch:
            got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise ValueError(f"PasskeyTask: batches must be dicts with input_ids and targets, got {got}")
        return batch["input_ids"], batch["targets"]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        input_ids, targets = self._unpack(batch)
        logits = self(input_ids)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
        self.log("train/loss", loss, prog_bar=True, batch_size=targets.shape[0])
        return loss

    # -- evaluation: sums over the split, so the figures do not depend on the batch size ---------------
    def _accumulate(self, batch: Any) -> None:
        input_ids, targets = self._unpack(batch)
        logits = self(input_ids)
        asked = targets != IGNORE_INDEX
        nats = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum")
        hit = (logits.argmax(-1) == targets) & asked
        values = {"nats": nats, "digits": asked.sum(), "correct": hit.sum(), "sequences": asked.any(1).sum(),
                  "retrieved": (asked.any(1) & (hit.sum(1) == asked.sum(1))).sum()}
        for key, value in values.items():
            total = self._sums.setdefault(key, torch.zeros((), dtype=torch.float64, device=targets.device))
            total += value.detach().to(torch.float64)

    def _finish(self, split: str) -> None:
        if not self._sums:
            return
        sums = {k: float(self.trainer.strategy.reduce(v, reduce_op="sum")) for k, v in self._sums.items()}
        self._sums = {}
        digits = max(sums["digits"], 1.0)
        self.log(f"{split}/acc", sums["retrieved"] / max(sums["sequences"], 1.0), prog_bar=split == "val")
        self.log(f"{split}/digit_acc", sums["correct"] / digits)
        self.log(f"{split}/loss", sums["nats"] / digits, prog_bar=split == "val")

    def on_validation_epoch_start(self) -> None:
        self._sums = {}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._accumulate(batch)

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_start(self) -> None:
        self._sums = {}

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._accumulate(batch)

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    @classmethod
    def summary(cls, results: dict[str, float | None]) -> str:
        if results.get("test_acc") is None:
            return super().summary(results)
        line = f"test passkey accuracy {results['test_acc']:.4f}"
        if results.get("test_digit_acc") is not None:
            line += f"   digit accuracy {results['test_digit_acc']:.4f}"
        return line

    def configure_optimizers(self) -> dict:
        groups = param_groups(self.model, self.lr, self.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = functools.partial(
            warmup_cosine, warmup_steps=warmup_steps_from(self.warmup, total), total_steps=total
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
